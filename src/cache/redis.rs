//! [`RedisTier`], [`SharedCache`] and [`SharedCached`]: the cache's shared
//! tier, in Redis, for several instances of a service (feature `redis`).
//!
//! See [`SharedCached`] for how the tiers work together.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RedisResult, cmd, pipe};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep, timeout};

use super::{CachePolicy, QueryCache};
use crate::{DashboardQuery, Loaded, QueryContext, TenantId};

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(2);
const DEFAULT_LOCK_WAIT: Duration = Duration::from_millis(250);
const DEFAULT_GENERATION_CHECK: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long [`RedisTier::connect`] tries, in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an instance waiting on another's lock looks for its value.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// At most one WARN per tier in this long, however Redis flaps.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// The longest `PX` we send; Redis refuses expiry times near `i64::MAX` ms.
const MAX_PX_MS: u128 = 10 * 365 * 24 * 3600 * 1000;
/// Deletes the lock `KEYS[1]` only if it still holds our token `ARGV[1]`.
const RELEASE_LOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A connection to the Redis that holds the cache's shared tier, with the
/// limits every call runs under.
///
/// Cloning is cheap and shares the connection (a redis-rs
/// `ConnectionManager`, which reconnects by itself) and the tier's health.
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
/// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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
    lock_ttl: Option<Duration>,
    lock_wait: Duration,
    generation_check: Duration,
    retry_after: Duration,
    health: Arc<Health>,
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
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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
        }
    }

    /// The limit on every Redis call (default 50 ms); a call that takes
    /// longer counts as a failure of the tier.
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
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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
    /// load.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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
    /// [`SharedCache::invalidate_tenant`], which also invalidates this
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
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
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

    fn keys(&self, tenant: &TenantId, generation: u64, query: &str, key: &str) -> Keys {
        let rest = format!("{tenant}:{generation}:{}:{}", escape(query), escape(key));
        Keys {
            value: format!("{}:v1:{rest}", self.namespace),
            lock: format!("{}:lock:{rest}", self.namespace),
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

    async fn get_generation(&self, tenant: &TenantId) -> Option<u64> {
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

    async fn get(&self, key: &str) -> Option<Option<Vec<u8>>> {
        self.call("GET", |mut connection| async move {
            cmd("GET").arg(key).query_async(&mut connection).await
        })
        .await
    }

    /// Whether this call took the lock (`SET NX PX`).
    async fn lock(&self, keys: &Keys, token: &str, ttl: Duration) -> Option<bool> {
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

    /// The value, if any, and whether the lock is held.
    async fn poll(&self, keys: &Keys) -> Option<(Option<Vec<u8>>, bool)> {
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
    async fn store(
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
fn px(duration: Duration) -> u64 {
    duration.as_millis().clamp(1, MAX_PX_MS) as u64
}

/// A query name or key as a key part: without `:`, so parts stay apart.
fn escape(part: &str) -> Cow<'_, str> {
    if part.contains([':', '%']) {
        Cow::Owned(part.replace('%', "%25").replace(':', "%3A"))
    } else {
        Cow::Borrowed(part)
    }
}

/// A value's key and its lock's.
struct Keys {
    value: String,
    lock: String,
}

/// A token naming one lock holder: unique to this process and call.
fn lock_token() -> String {
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

/// Wall-clock milliseconds since the Unix epoch: values' ages must agree
/// across instances, which share no monotonic clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A value as stored: MessagePack of `[computed_at_ms, value]`.
fn encode<T: Serialize>(
    value: &T,
    computed_at_ms: u64,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(&(computed_at_ms, value))
}

/// A stored value younger than `limit`, and its age. One that does not
/// decode as a `T` (stored by another version of the service) is a miss.
fn decode_within<T: DeserializeOwned>(
    bytes: &[u8],
    limit: Duration,
    query: &str,
) -> Option<(T, Duration)> {
    match rmp_serde::from_slice::<(u64, T)>(bytes) {
        Ok((computed_at_ms, value)) => {
            let age = Duration::from_millis(now_ms().saturating_sub(computed_at_ms));
            (age < limit).then_some((value, age))
        }
        Err(error) => {
            tracing::debug!(query, %error, "ignoring a shared cache value that does not decode");
            None
        }
    }
}

/// Whether Redis is failing, and when to try it again: a circuit breaker,
/// and the one-WARN-per-episode log.
#[derive(Default)]
struct Health(Mutex<HealthState>);

#[derive(Default)]
struct HealthState {
    failing: bool,
    retry_at: Option<Instant>,
    warned_at: Option<Instant>,
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether to call Redis now: always while it works; while it fails,
    /// once per `retry_after` (the call that finds the pause over).
    fn admits(&self, retry_after: Duration) -> bool {
        let mut state = self.state();
        if !state.failing {
            return true;
        }
        let now = Instant::now();
        match state.retry_at {
            Some(at) if now < at => false,
            _ => {
                state.retry_at = Some(now + retry_after);
                true
            }
        }
    }

    fn succeeded(&self, namespace: &str) {
        let mut state = self.state();
        if state.failing {
            state.failing = false;
            state.retry_at = None;
            drop(state);
            tracing::info!(namespace, "Redis shared cache reachable again");
        }
    }

    fn failed(&self, namespace: &str, error: &RedisTierError, retry_after: Duration) {
        let mut state = self.state();
        let now = Instant::now();
        state.retry_at = Some(now + retry_after);
        let warn = !state.failing
            && state
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
        state.failing = true;
        if warn {
            state.warned_at = Some(now);
        }
        drop(state);
        if warn {
            tracing::warn!(
                namespace,
                %error,
                "Redis shared cache unavailable; serving from the in-process cache and the database"
            );
        } else {
            tracing::debug!(namespace, %error, "Redis shared cache call failed");
        }
    }
}

/// Why the shared tier could not do what was asked: one line, without the
/// URL (it may hold a password).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let error = fanout::cache::RedisTier::connect("redis://127.0.0.1:1/", "dashboards").await.unwrap_err();
/// assert!(error.to_string().starts_with("Redis shared cache: cannot connect: "), "{error}");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Redis shared cache: {op}: {detail}")]
pub struct RedisTierError {
    op: &'static str,
    detail: String,
}

impl RedisTierError {
    fn redis(op: &'static str, error: &RedisError) -> Self {
        Self {
            op,
            detail: error.to_string().replace(['\n', '\r'], " "),
        }
    }

    fn timed_out(op: &'static str, limit: Duration) -> Self {
        Self {
            op,
            detail: format!("no answer within {} ms", limit.as_millis()),
        }
    }
}

/// An instance's in-process [`QueryCache`] in front of a shared
/// [`RedisTier`]: what [`SharedCached`] queries are served through.
///
/// Cloning is cheap and shares both tiers. Make one per service and clone
/// it; it remembers each tenant's generation as last read from Redis (one
/// small entry per tenant), so that an invalidation made elsewhere reaches
/// the in-process tier too.
///
/// # Examples
///
/// ```
/// use fanout::cache::{QueryCache, RedisTier, SharedCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
/// let redis = RedisTier::connect(&url, "dashboards").await?;
/// let cache = SharedCache::new(&QueryCache::new(10_000), &redis);
/// assert_eq!(cache.local().entry_count(), 0);
/// assert_eq!(cache.redis().namespace(), "dashboards");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedCache {
    local: QueryCache,
    redis: RedisTier,
    seen: Arc<Mutex<HashMap<TenantId, Seen>>>,
}

/// A tenant's generation in Redis, and when it was read.
#[derive(Clone, Copy)]
struct Seen {
    generation: u64,
    at: Instant,
}

impl SharedCache {
    /// `local` in front of `redis`.
    ///
    /// # Examples
    ///
    /// See [`SharedCache`].
    pub fn new(local: &QueryCache, redis: &RedisTier) -> Self {
        Self {
            local: local.clone(),
            redis: redis.clone(),
            seen: Arc::default(),
        }
    }

    /// The in-process tier.
    ///
    /// # Examples
    ///
    /// See [`SharedCache`].
    pub fn local(&self) -> &QueryCache {
        &self.local
    }

    /// The shared tier.
    ///
    /// # Examples
    ///
    /// See [`SharedCache`].
    pub fn redis(&self) -> &RedisTier {
        &self.redis
    }

    /// Makes every value cached for `tenant` unreachable, in O(1): the
    /// tenant's generation moves on in Redis (`INCR`) and in this
    /// instance's in-process tier. Other instances' in-process tiers follow
    /// within the tier's [`generation_check`](RedisTier::generation_check).
    /// Returns the new generation in Redis.
    ///
    /// # Errors
    ///
    /// Redis failed or did not answer within the call timeout: the
    /// in-process tier is invalidated all the same, the other instances
    /// are not.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::cache::{QueryCache, RedisTier, SharedCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
    /// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    /// let cache = SharedCache::new(&QueryCache::new(100), &RedisTier::connect(&url, &namespace).await?);
    /// let tenant = fanout::TenantId::new("t1")?;
    /// assert_eq!(cache.invalidate_tenant(&tenant).await?, 1);
    /// assert_eq!(cache.local().generation(&tenant), 1);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tenant(&self, tenant: &TenantId) -> Result<u64, RedisTierError> {
        // Redis first, the in-process tier last: a load that starts in
        // between uses the old local key, which the bump then retires.
        let result = self.redis.invalidate_tenant(tenant).await;
        if let Ok(generation) = result {
            self.seen_mut().insert(
                tenant.clone(),
                Seen {
                    generation,
                    at: Instant::now(),
                },
            );
        }
        self.local.invalidate_tenant(tenant);
        result
    }

    fn seen_mut(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Seen>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant's generation in Redis, read at most once per
    /// `generation_check`; the last one read while Redis is unavailable,
    /// `None` if none was. A new generation invalidates the tenant in the
    /// in-process tier.
    async fn generation(&self, tenant: &TenantId) -> Option<u64> {
        let known = self.seen_mut().get(tenant).copied();
        if let Some(seen) = known
            && seen.at.elapsed() < self.redis.generation_check
        {
            return Some(seen.generation);
        }
        let asked = Instant::now();
        let Some(generation) = self.redis.get_generation(tenant).await else {
            return known.map(|seen| seen.generation);
        };
        let mut seen = self.seen_mut();
        let now = Instant::now();
        match seen.get_mut(tenant) {
            // Newer news arrived while we asked (an invalidation here).
            Some(latest) if latest.at > asked => Some(latest.generation),
            Some(latest) => {
                let changed = latest.generation != generation;
                *latest = Seen {
                    generation,
                    at: now,
                };
                drop(seen);
                if changed {
                    self.local.invalidate_tenant(tenant);
                }
                Some(generation)
            }
            None => {
                seen.insert(
                    tenant.clone(),
                    Seen {
                        generation,
                        at: now,
                    },
                );
                Some(generation)
            }
        }
    }
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("local", &self.local)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

/// A query served through a [`SharedCache`]: the in-process tier, then
/// Redis, then the query itself. A [`DashboardQuery`] with the wrapped
/// query's name, timeout and fallback, like [`Cached`](super::Cached).
///
/// The value type must be `Clone` and serde's `Serialize` and
/// `DeserializeOwned` (it is stored as MessagePack). A value stored by a
/// build whose type has changed shape does not decode and counts as a miss;
/// change the namespace along with such a type to keep versions apart.
///
/// | found… | source |
/// |--------|--------|
/// | in this instance, younger than `ttl` | `Cached { age }` |
/// | in Redis, younger than `ttl` | `Cached { age }` (age from when it was computed, on any instance) |
/// | nowhere, or Redis unavailable: the query ran | `Fresh`; the value is stored in both tiers |
/// | the query failed: the last value within `ttl + stale_if_error`, here or in Redis | `Stale { age, cause }` |
///
/// # Degrading
///
/// Every Redis call has a short timeout (50 ms by default), and a Redis that
/// fails or is slow is then left alone for a while (a circuit breaker; see
/// [`RedisTier`]): queries are served by the in-process tier and the
/// database as if there were no shared tier. The tier logs one WARN when
/// Redis starts failing (at most one per 30 s) and one INFO when it answers
/// again; a query's outcome is never an error because of Redis, and a
/// dashboard is at most one call timeout slower.
///
/// # Keys
///
/// | key | holds |
/// |-----|-------|
/// | `{namespace}:gen:{tenant}` | the tenant's generation (missing = 0), `INCR`ed by [`SharedCache::invalidate_tenant`] |
/// | `{namespace}:v1:{tenant}:{generation}:{query}:{key}` | a value and the wall-clock time it was computed (MessagePack), expiring after the policy's [`keep_for`](CachePolicy::keep_for) |
/// | `{namespace}:lock:{tenant}:{generation}:{query}:{key}` | the lock of the instance computing that value (`SET NX PX`) |
///
/// A `:` or `%` in the query name or key is written `%3A` or `%25`, and a
/// tenant id has neither, so two tenants never share a key. Invalidation
/// moves the tenant to a new generation in O(1), without `KEYS` or `SCAN`;
/// the old values age out.
///
/// # One execution across instances
///
/// Within an instance, callers of one key wait on one computation (the
/// in-process tier's). Across instances, the one that finds no value takes
/// the key's lock and runs the query; the others poll Redis for its value
/// for at most the lock wait (250 ms by default), then run the query
/// themselves. With the lock wait longer than the query, a stampede costs
/// the database one execution per key; a slower query or a lock holder
/// that dies costs one more from each waiting instance.
///
/// # Examples
///
/// Two instances of a service, each with its own in-process cache, share
/// values through Redis:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use fanout::cache::{CachePolicy, QueryCache, RedisTier, SharedCache, SharedCached};
/// use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
///
/// #[derive(Default)]
/// struct Revenue { runs: AtomicUsize }
///
/// impl DashboardQuery for Revenue {
///     type Output = i64;
///     type Error = std::io::Error;
///     fn name(&self) -> &'static str { "total_revenue" }
///     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
///         self.runs.fetch_add(1, Ordering::SeqCst);
///         Ok(125_000)
///     }
///     fn fallback(&self) -> i64 { 0 }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
/// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
/// let redis = RedisTier::connect(&url, &namespace).await?;
/// let policy = CachePolicy::ttl(Duration::from_secs(30));
/// let (fan_out, tenant) = (FanOut::new(), TenantId::new("creche-1")?);
///
/// let a = SharedCached::new(Revenue::default(), &SharedCache::new(&QueryCache::new(1_000), &redis), policy);
/// let b = SharedCached::new(Revenue::default(), &SharedCache::new(&QueryCache::new(1_000), &redis), policy);
///
/// let (first,) = fan_out.run(&tenant, (&a,)).await;
/// assert!(first.is_fresh());
/// let (second,) = fan_out.run(&tenant, (&b,)).await;
/// assert!(matches!(second.source, Source::Cached { .. }));
/// assert_eq!(second.value, 125_000);
/// assert_eq!(b.inner().runs.load(Ordering::SeqCst), 0); // served by a's execution
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedCached<Q> {
    query: Q,
    cache: SharedCache,
    policy: CachePolicy,
    key: Arc<str>,
}

impl<Q> SharedCached<Q> {
    /// Serves `query` through `cache` under `policy`.
    ///
    /// # Examples
    ///
    /// See [`SharedCached`].
    pub fn new(query: Q, cache: &SharedCache, policy: CachePolicy) -> Self {
        Self {
            query,
            cache: cache.clone(),
            policy,
            key: Arc::from(""),
        }
    }

    /// Adds `key` to the cache key, for a query whose value depends on more
    /// than the tenant (a date range, a page).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use fanout::cache::{CachePolicy, QueryCache, RedisTier, SharedCache, SharedCached};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, or run scripts/test")?;
    /// # let cache = SharedCache::new(&QueryCache::new(100), &RedisTier::connect(&url, "dashboards").await?);
    /// let this_month = SharedCached::new("query", &cache, CachePolicy::ttl(Duration::from_secs(60))).key("2026-11");
    /// # let _ = this_month;
    /// # Ok(()) }
    /// ```
    pub fn key(mut self, key: impl AsRef<str>) -> Self {
        self.key = Arc::from(key.as_ref());
        self
    }

    /// The wrapped query.
    ///
    /// # Examples
    ///
    /// See [`SharedCached`].
    pub fn inner(&self) -> &Q {
        &self.query
    }
}

impl<Q> SharedCached<Q>
where
    Q: DashboardQuery,
    Q::Output: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Past the in-process tier: Redis, the lock, or the query.
    async fn compute(
        &self,
        ctx: QueryContext,
        generation: Option<u64>,
    ) -> Result<Loaded<Q::Output>, Q::Error> {
        let redis = &self.cache.redis;
        let Some(generation) = generation else {
            return self.query.run(ctx).await.map(Loaded::Fresh);
        };
        let name = self.query.name();
        let keys = redis.keys(ctx.tenant(), generation, name, &self.key);
        let ttl = self.policy.time_to_live();
        match redis.get(&keys.value).await {
            None => return self.run_and_store(ctx, &keys, None).await,
            Some(Some(bytes)) => {
                if let Some((value, age)) = decode_within(&bytes, ttl, name) {
                    return Ok(Loaded::Cached { value, age });
                }
            }
            Some(None) => {}
        }
        let token = lock_token();
        let lock_ttl = redis
            .lock_ttl
            .or_else(|| ctx.remaining())
            .unwrap_or(DEFAULT_LOCK_TTL);
        match redis.lock(&keys, &token, lock_ttl).await {
            Some(true) => return self.run_and_store(ctx, &keys, Some(&token)).await,
            None => return self.run_and_store(ctx, &keys, None).await,
            Some(false) => {}
        }
        // Another instance is computing: wait a bounded time for its value,
        // or take over its lock if it gives up without one.
        let until = Instant::now() + redis.lock_wait;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            sleep(POLL_INTERVAL.min(until - now)).await;
            let Some((value, locked)) = redis.poll(&keys).await else {
                break;
            };
            if let Some(bytes) = value
                && let Some((value, age)) = decode_within(&bytes, ttl, name)
            {
                return Ok(Loaded::Cached { value, age });
            }
            if !locked && redis.lock(&keys, &token, lock_ttl).await == Some(true) {
                return self.run_and_store(ctx, &keys, Some(&token)).await;
            }
        }
        self.run_and_store(ctx, &keys, None).await
    }

    /// Runs the query and stores its value in Redis, releasing the lock if
    /// `token` holds it.
    async fn run_and_store(
        &self,
        ctx: QueryContext,
        keys: &Keys,
        token: Option<&str>,
    ) -> Result<Loaded<Q::Output>, Q::Error> {
        let result = self.query.run(ctx).await;
        let bytes = match &result {
            Ok(value) => match encode(value, now_ms()) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    tracing::debug!(query = self.query.name(), %error, "cannot encode a value for the shared cache");
                    None
                }
            },
            Err(_) => None,
        };
        self.cache
            .redis
            .store(keys, bytes, self.policy.keep_for(), token)
            .await;
        result.map(Loaded::Fresh)
    }
}

impl<Q> DashboardQuery for SharedCached<Q>
where
    Q: DashboardQuery,
    Q::Output: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Output = Q::Output;
    type Error = Q::Error;

    fn name(&self) -> &'static str {
        self.query.name()
    }

    async fn run(&self, ctx: QueryContext) -> Result<Q::Output, Q::Error> {
        match self.load(ctx).await? {
            Loaded::Fresh(value) | Loaded::Cached { value, .. } => Ok(value),
        }
    }

    fn fallback(&self) -> Q::Output {
        self.query.fallback()
    }

    fn timeout(&self) -> Option<Duration> {
        self.query.timeout()
    }

    async fn load(&self, ctx: QueryContext) -> Result<Loaded<Q::Output>, Q::Error> {
        let generation = self.cache.generation(ctx.tenant()).await;
        self.cache
            .local
            .load_with(self.query.name(), &self.key, self.policy, ctx, |ctx| {
                self.compute(ctx, generation)
            })
            .await
    }

    async fn stale(&self, tenant: &TenantId) -> Option<(Q::Output, Duration)> {
        let name = self.query.name();
        let local = self.cache.local.stale(tenant, name, &self.key, self.policy);
        if let Some(found) = local.await {
            return Some(found);
        }
        let generation = self.cache.generation(tenant).await?;
        let keys = self.cache.redis.keys(tenant, generation, name, &self.key);
        let bytes = self.cache.redis.get(&keys.value).await??;
        decode_within(&bytes, self.policy.keep_for(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
        let bytes = encode(value, now_ms()).unwrap();
        decode_within(&bytes, Duration::from_secs(60), "q")
            .unwrap()
            .0
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Stats {
        count: u32,
        names: Vec<String>,
        ratio: Option<f64>,
        kind: Kind,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Kind {
        Plain,
        Tagged { id: i64 },
    }

    #[test]
    fn the_codec_keeps_the_value_types_dashboards_use() {
        let stats = Stats {
            count: 3,
            names: vec!["a".into(), "b".into()],
            ratio: Some(0.25),
            kind: Kind::Tagged { id: -7 },
        };
        assert_eq!(round_trip(&stats), stats);
        assert_eq!(round_trip(&vec![1_i64, -2, 3]), vec![1, -2, 3]);
        assert_eq!(round_trip(&"text".to_owned()), "text");
        assert_eq!(round_trip(&Kind::Plain), Kind::Plain);
        let json = serde_json::json!({"total": 125000, "rows": [{"id": 1, "paid": true}], "note": null, "rate": 0.5});
        assert_eq!(round_trip(&json), json);
        // Compact: a struct is an array, without field names.
        assert!(encode(&stats, 0).unwrap().len() < 30);
    }

    #[test]
    fn a_value_of_another_shape_is_a_miss_and_an_old_one_too() {
        let bytes = encode(&"text".to_owned(), now_ms()).unwrap();
        assert!(decode_within::<i64>(&bytes, Duration::from_secs(60), "q").is_none());
        let old = encode(&1_i64, now_ms() - 61_000).unwrap();
        assert!(decode_within::<i64>(&old, Duration::from_secs(60), "q").is_none());
        let (_, age) = decode_within::<i64>(&old, Duration::from_secs(120), "q").unwrap();
        assert!(age >= Duration::from_secs(61));
    }

    #[test]
    fn key_parts_never_run_together() {
        assert_eq!(escape("total_revenue"), "total_revenue");
        assert_eq!(escape("a:b%c"), "a%3Ab%25c");
        assert_ne!(
            format!("{}:{}", escape("a:b"), escape("c")),
            format!("{}:{}", escape("a"), escape("b:c"))
        );
    }

    #[test]
    fn px_is_never_zero_nor_huge() {
        assert_eq!(px(Duration::ZERO), 1);
        assert_eq!(px(Duration::from_millis(1500)), 1500);
        assert_eq!(px(Duration::MAX), MAX_PX_MS as u64);
    }

    #[test]
    fn lock_tokens_are_unique() {
        assert_ne!(lock_token(), lock_token());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_redis_is_tried_once_per_pause_and_warned_about_once() {
        let health = Health::default();
        let pause = Duration::from_secs(1);
        let error = RedisTierError::timed_out("GET", Duration::from_millis(50));
        assert!(health.admits(pause));
        health.failed("ns", &error, pause);
        assert!(!health.admits(pause));
        tokio::time::advance(pause).await;
        assert!(health.admits(pause), "one probe");
        assert!(!health.admits(pause), "only one");
        health.succeeded("ns");
        assert!(health.admits(pause));
        // A second episode soon after the first: no second WARN.
        health.failed("ns", &error, pause);
        assert!(health.state().warned_at.unwrap().elapsed() >= pause);
    }
}
