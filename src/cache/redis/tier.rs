//! [`RedisTier`]: the connection to Redis, its limits, and the calls and keys it uses.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, cmd, pipe};
use serde::de::DeserializeOwned;
use tokio::time::timeout;

use super::RedisTierError;
use super::codec::{Schema, Stored, decode_within, now_ms};
use super::decode_failures::DecodeFailures;
use super::health::Health;
use crate::TenantId;

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(50);
pub(super) const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(2);
const DEFAULT_LOCK_WAIT: Duration = Duration::from_millis(250);
const DEFAULT_GENERATION_CHECK: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long [`RedisTier::connect`] tries, in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `PX` we send; Redis refuses expiry times near `i64::MAX` ms.
pub(super) const MAX_PX_MS: u128 = 10 * 365 * 24 * 3600 * 1000;
/// Deletes the lock `KEYS[1]` only if it still holds our token `ARGV[1]`.
const RELEASE_LOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A connection to the Redis that holds the cache's shared tier, with the
/// limits every call runs under.
///
/// Cloning is cheap and shares the connection (a redis-rs
/// `ConnectionManager`, which reconnects by itself), the tier's health and
/// its [`decode_failures`](Self::decode_failures) count.
/// The settings and their defaults:
///
/// | setting | default | what |
/// |---------|---------|------|
/// | [`call_timeout`](Self::call_timeout) | 50 ms | the limit on every Redis call |
/// | [`lock_ttl`](Self::lock_ttl) | the query's time left, else 2 s | how long a computing instance holds a key's lock |
/// | [`lock_wait`](Self::lock_wait) | 250 ms | how long the other instances wait for its value |
/// | [`generation_check`](Self::generation_check) | 1 s | how often an instance re-reads a tenant's generation |
/// | [`retry_after`](Self::retry_after) | 1 s | how long a failing Redis is left alone before one call tries it again |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::cache::RedisTier;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
/// let redis = RedisTier::connect(&url, "dashboards")
///     .await?
///     .call_timeout(Duration::from_millis(20))
///     .lock_wait(Duration::from_millis(400));
/// assert_eq!(redis.namespace(), "dashboards");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTier {
    connection: ConnectionManager,
    namespace: Arc<str>,
    call_timeout: Duration,
    pub(super) lock_ttl: Option<Duration>,
    pub(super) lock_wait: Duration,
    pub(super) generation_check: Duration,
    retry_after: Duration,
    health: Arc<Health>,
    decode_failures: Arc<DecodeFailures>,
}

impl RedisTier {
    /// Connects to the Redis at `url` (`redis://host:port/db`), keeping
    /// every key under `namespace`; gives up after 2 s.
    ///
    /// # Errors
    ///
    /// An invalid URL, or a Redis that does not answer. A service that
    /// should start while Redis is down uses
    /// [`connect_lazy`](Self::connect_lazy) instead.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// let redis = fanout::cache::RedisTier::connect(&url, "dashboards").await?;
    /// # let _ = redis;
    ///
    /// let error = fanout::cache::RedisTier::connect("http://localhost", "dashboards").await.unwrap_err();
    /// assert!(error.to_string().starts_with("Redis shared cache: invalid URL: "), "{error}");
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, RedisTierError> {
        let client = open(url)?;
        let connecting = ConnectionManager::new_with_config(client, manager_config());
        let connection = match timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err(RedisTierError::redis("cannot connect", &error)),
            Err(_) => return Err(RedisTierError::timed_out("cannot connect", CONNECT_TIMEOUT)),
        };
        Ok(Self::new(connection, namespace))
    }

    /// Like [`connect`](Self::connect), but connects on first use: a Redis
    /// that is down when the service starts is a degraded shared tier, not
    /// an error. Call it inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// An invalid URL.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Nothing listens there: the tier starts out failing, and queries
    /// // served through it run as if it were absent.
    /// let redis = fanout::cache::RedisTier::connect_lazy("redis://127.0.0.1:1/", "dashboards")?;
    /// assert!(redis.generation(&fanout::TenantId::new("t1")?).await.is_err());
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(url: &str, namespace: &str) -> Result<Self, RedisTierError> {
        let client = open(url)?;
        let connection = ConnectionManager::new_lazy_with_config(client, manager_config())
            .map_err(|error| RedisTierError::redis("cannot connect", &error))?;
        Ok(Self::new(connection, namespace))
    }

    fn new(connection: ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            namespace: Arc::from(namespace),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            lock_ttl: None,
            lock_wait: DEFAULT_LOCK_WAIT,
            generation_check: DEFAULT_GENERATION_CHECK,
            retry_after: DEFAULT_RETRY_AFTER,
            health: Arc::default(),
            decode_failures: Arc::default(),
        }
    }

    /// The limit on every Redis call (default 50 ms); a call that takes
    /// longer counts as a failure of the tier. `Duration::MAX` means no
    /// limit.
    ///
    /// # Examples
    ///
    /// See [`RedisTier`].
    pub fn call_timeout(mut self, limit: Duration) -> Self {
        self.call_timeout = limit;
        self
    }

    /// How long an instance computing a value holds its key's lock, at
    /// most; by default the time the query has left (its timeout or the
    /// fan-out's deadline), or 2 s when it has no limit. The lock is
    /// released as soon as the value is stored.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// let redis = fanout::cache::RedisTier::connect(&url, "dashboards")
    ///     .await?
    ///     .lock_ttl(std::time::Duration::from_secs(5));
    /// # let _ = redis;
    /// # Ok(()) }
    /// ```
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = Some(ttl);
        self
    }

    /// How long an instance that finds a key locked by another waits for
    /// that instance's value before running the query itself (default
    /// 250 ms). Set it above the query's usual latency.
    ///
    /// `Duration::MAX` means no limit of its own: the instance waits until
    /// the value arrives or the lock is free (then takes it and runs the
    /// query), within the query's timeout and the fan-out's deadline as
    /// always. The waiting stops early when Redis fails.
    ///
    /// # Examples
    ///
    /// See [`RedisTier`].
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// How often an instance re-reads a tenant's generation from Redis
    /// (default 1 s): an invalidation made on another instance reaches
    /// this one's in-process tier within this long. Zero reads it on every
    /// load. A [`SharedCache`](super::SharedCache) forgets a generation
    /// read more than 60 checks ago (at least 1 s, at most 10 minutes), so
    /// `Duration::MAX` re-reads a tenant's generation only once the tenant
    /// was forgotten: 10 minutes or more after the last read.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// let redis = fanout::cache::RedisTier::connect(&url, "dashboards")
    ///     .await?
    ///     .generation_check(std::time::Duration::ZERO);
    /// # let _ = redis;
    /// # Ok(()) }
    /// ```
    pub fn generation_check(mut self, every: Duration) -> Self {
        self.generation_check = every;
        self
    }

    /// After a failed call, how long queries skip Redis before one call
    /// tries it again (default 1 s).
    ///
    /// `Duration::MAX` means never: once a call fails, queries never call
    /// Redis again. Only [`generation`](Self::generation) and
    /// [`invalidate_tenant`](Self::invalidate_tenant), which always call
    /// it, can find it working again, and one that succeeds lets queries
    /// use it again.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// let redis = fanout::cache::RedisTier::connect(&url, "dashboards")
    ///     .await?
    ///     .retry_after(std::time::Duration::from_secs(5));
    /// # let _ = redis;
    /// # Ok(()) }
    /// ```
    pub fn retry_after(mut self, pause: Duration) -> Self {
        self.retry_after = pause;
        self
    }

    /// The prefix of every key this tier uses.
    ///
    /// # Examples
    ///
    /// See [`RedisTier`].
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How many values read from Redis did not decode as their query's
    /// value type, since this tier was connected (clones share the count).
    ///
    /// Each was treated as a miss: the query ran and its value replaced
    /// the one in Redis. A count that grows means two builds with
    /// incompatible value types share keys: bump
    /// [`SharedCached::schema`](super::SharedCached::schema) with such a
    /// change. The first failure logs a WARN, then at most one per 30 s
    /// (DEBUG in between); with the `metrics` feature each one also counts
    /// in the counter `fanout_redis_decode_failures_total`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// let redis = fanout::cache::RedisTier::connect(&url, "dashboards").await?;
    /// assert_eq!(redis.decode_failures(), 0);
    /// # Ok(()) }
    /// ```
    pub fn decode_failures(&self) -> u64 {
        self.decode_failures.count()
    }

    /// The tenant's generation in Redis: how many times it was
    /// invalidated.
    ///
    /// # Errors
    ///
    /// Redis failed or did not answer within the call timeout.
    ///
    /// # Examples
    ///
    /// See [`invalidate_tenant`](Self::invalidate_tenant).
    pub async fn generation(&self, tenant: &TenantId) -> Result<u64, RedisTierError> {
        let key = self.generation_key(tenant);
        let generation = self
            .checked("GET", move |mut connection| async move {
                cmd("GET")
                    .arg(&key)
                    .query_async::<Option<u64>>(&mut connection)
                    .await
            })
            .await?;
        Ok(generation.unwrap_or(0))
    }

    /// Makes every value stored in Redis for `tenant` unreachable, in O(1)
    /// (an `INCR` of its generation); returns the new generation. Other
    /// instances' in-process tiers follow within the
    /// [`generation_check`](Self::generation_check); prefer
    /// [`SharedCache::invalidate_tenant`](super::SharedCache::invalidate_tenant), which also invalidates this
    /// instance's in-process tier at once.
    ///
    /// # Errors
    ///
    /// Redis failed or did not answer within the call timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    /// let redis = fanout::cache::RedisTier::connect(&url, &namespace).await?;
    /// let tenant = fanout::TenantId::new("t1")?;
    /// assert_eq!(redis.generation(&tenant).await?, 0);
    /// assert_eq!(redis.invalidate_tenant(&tenant).await?, 1);
    /// assert_eq!(redis.generation(&tenant).await?, 1);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<u64, RedisTierError> {
        let key = self.generation_key(tenant);
        self.checked("INCR", move |mut connection| async move {
            cmd("INCR")
                .arg(&key)
                .query_async::<u64>(&mut connection)
                .await
        })
        .await
    }

    fn generation_key(&self, tenant: &TenantId) -> String {
        format!("{}:gen:{tenant}", self.namespace)
    }

    pub(super) fn keys(
        &self,
        tenant: &TenantId,
        generation: u64,
        query: &str,
        key: &str,
        schema: Schema,
    ) -> Keys {
        let rest = format!(
            "{tenant}:{generation}:{}:{}:{schema}",
            escape(query),
            escape(key)
        );
        Keys {
            value: format!("{}:v2:{rest}", self.namespace),
            lock: format!("{}:lock:{rest}", self.namespace),
        }
    }

    /// A value read from Redis, younger than `limit`; `None` for one
    /// older, or one that does not decode as a `T` (counted and logged: see
    /// [`decode_failures`](Self::decode_failures)).
    pub(super) fn decode_within<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        limit: Duration,
        query: &'static str,
    ) -> Option<Stored<T>> {
        match decode_within(bytes, limit) {
            Ok(found) => found,
            Err(error) => {
                self.decode_failures.record(&self.namespace, query, &error);
                None
            }
        }
    }

    /// A call under the timeout, whatever the tier's health; the outcome
    /// is reported to it.
    async fn checked<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, RedisTierError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match timeout(self.call_timeout, call(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(RedisTierError::redis(op, &error)),
            Err(_) => Err(RedisTierError::timed_out(op, self.call_timeout)),
        };
        match &result {
            Ok(_) => self.health.succeeded(&self.namespace),
            Err(error) => self.health.failed(&self.namespace, error, self.retry_after),
        }
        result
    }

    /// A call on a query's path: `None` when Redis fails, is slow, or is
    /// being left alone after failing.
    async fn call<T, F, Fut>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.health.admits(self.retry_after) {
            return None;
        }
        self.checked(op, call).await.ok()
    }

    pub(super) async fn get_generation(&self, tenant: &TenantId) -> Option<u64> {
        let key = self.generation_key(tenant);
        self.call("GET", move |mut connection| async move {
            cmd("GET")
                .arg(&key)
                .query_async::<Option<u64>>(&mut connection)
                .await
        })
        .await
        .map(|generation| generation.unwrap_or(0))
    }

    pub(super) async fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.call("GET", |mut connection| async move {
            cmd("GET").arg(key).query_async(&mut connection).await
        })
        .await
    }

    /// Whether this call took the lock (`SET NX PX`).
    pub(super) async fn lock(&self, keys: &Keys, token: &str, ttl: Duration) -> Option<bool> {
        self.call("SET NX", |mut connection| async move {
            cmd("SET")
                .arg(&keys.lock)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(px(ttl))
                .query_async::<Option<String>>(&mut connection)
                .await
        })
        .await
        .map(|reply| reply.is_some())
    }

    /// Tries to take the lock (`SET NX PX`) and reads the value, in one
    /// round trip (in that order): whether this call took the lock, and
    /// the value, if any.
    pub(super) async fn lock_and_get(
        &self,
        keys: &Keys,
        token: &str,
        ttl: Duration,
    ) -> Option<(bool, Option<Vec<u8>>)> {
        let mut commands = pipe();
        commands
            .cmd("SET")
            .arg(&keys.lock)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(px(ttl))
            .cmd("GET")
            .arg(&keys.value);
        self.call("SET NX", |mut connection| async move {
            commands
                .query_async::<(Option<String>, Option<Vec<u8>>)>(&mut connection)
                .await
        })
        .await
        .map(|(locked, value)| (locked.is_some(), value))
    }

    /// The value, if any, and whether the lock is held.
    pub(super) async fn poll(&self, keys: &Keys) -> Option<(Option<Vec<u8>>, bool)> {
        self.call("MGET", |mut connection| async move {
            cmd("MGET")
                .arg(&keys.value)
                .arg(&keys.lock)
                .query_async::<(Option<Vec<u8>>, Option<Vec<u8>>)>(&mut connection)
                .await
        })
        .await
        .map(|(value, lock)| (value, lock.is_some()))
    }

    /// Stores `bytes` for `keep_for` and, in the same round trip, releases
    /// the lock if `token` still holds it.
    pub(super) async fn store(
        &self,
        keys: &Keys,
        bytes: Option<Vec<u8>>,
        keep_for: Duration,
        token: Option<&str>,
    ) {
        let mut commands = pipe();
        if let Some(bytes) = bytes {
            commands
                .cmd("SET")
                .arg(&keys.value)
                .arg(bytes)
                .arg("PX")
                .arg(px(keep_for))
                .ignore();
        }
        if let Some(token) = token {
            commands
                .cmd("EVAL")
                .arg(RELEASE_LOCK)
                .arg(1)
                .arg(&keys.lock)
                .arg(token)
                .ignore();
        }
        if commands.cmd_iter().next().is_none() {
            return;
        }
        self.call("SET", |mut connection| async move {
            commands.query_async::<()>(&mut connection).await
        })
        .await;
    }
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the connection: its URL may hold a password.
        f.debug_struct("RedisTier")
            .field("namespace", &self.namespace)
            .field("call_timeout", &self.call_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_wait", &self.lock_wait)
            .field("generation_check", &self.generation_check)
            .field("retry_after", &self.retry_after)
            .field("decode_failures", &self.decode_failures())
            .finish_non_exhaustive()
    }
}

fn open(url: &str) -> Result<Client, RedisTierError> {
    Client::open(url).map_err(|error| RedisTierError::redis("invalid URL", &error))
}

/// Few, quick reconnection attempts: while they fail, calls fail (at the
/// latest at their timeout) and the tier is skipped.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Milliseconds for `PX`: at least 1 (Redis refuses 0), at most about ten
/// years.
pub(super) fn px(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, MAX_PX_MS) as u64
}

/// A query name or key as a key part: without `:`, so parts stay apart.
pub(super) fn escape(part: &str) -> Cow<'_, str> {
    if part.contains([':', '%']) {
        Cow::Owned(part.replace('%', "%25").replace(':', "%3A"))
    } else {
        Cow::Borrowed(part)
    }
}

/// A value's key and its lock's.
pub(super) struct Keys {
    pub(super) value: String,
    lock: String,
}

/// A token naming one lock holder: unique to this process and call.
pub(super) fn lock_token() -> String {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(now_ms().into());
        hasher.finish()
    });
    format!("{process:016x}-{}", CALLS.fetch_add(1, Ordering::Relaxed))
}
