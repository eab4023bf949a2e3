//! [`SharedCache`] and [`SharedCached`]: the in-process tier in front of Redis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, sleep};

use super::codec::{Schema, Stored, encode, now_ms};
use super::early::EarlyRefresh;
use super::generations::{Generation, Generations};
use super::tier::{DEFAULT_LOCK_TTL, Keys, lock_token};
use super::{RedisTier, RedisTierError};
use crate::cache::local::Replacement;
use crate::cache::{CachePolicy, LoadError, QueryCache};
use crate::{DashboardQuery, Loaded, QueryContext, TenantId};

/// How often an instance waiting on another's lock looks for its value.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// An instance's in-process [`QueryCache`] in front of a shared
/// [`RedisTier`]: what [`SharedCached`] queries are served through.
///
/// Cloning is cheap and shares both tiers. Make one per service and clone
/// it.
///
/// # Generations
///
/// The in-process tier keys each value by its tenant's generation in
/// Redis, so an invalidation made on another instance reaches this one's
/// in-process tier too. A `SharedCache` remembers each tenant's generation
/// as last read from Redis, and for how long:
///
/// - A load re-reads it once it is older than the tier's
///   [`generation_check`](RedisTier::generation_check) (1 s by default).
/// - While Redis is unavailable, loads use the last generation read, and
///   the in-process tier keeps serving that generation's values.
/// - A generation read more than 60 generation checks ago (at least 1 s, at
///   most 10 minutes; a minute by default) is forgotten at the next sweep.
///   Sweeps run when a new tenant is remembered, at most once per that
///   period, so the memory held never exceeds one small entry per tenant
///   read from Redis within the two periods before the newest one.
/// - A forgotten tenant, while Redis is unavailable, has no known
///   generation: its loads find only values computed since Redis became
///   unavailable (or else run the query), never values of a generation
///   that may since have been invalidated.
///
/// # Examples
///
/// ```
/// use fanout::cache::{QueryCache, RedisTier, SharedCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
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
    seen: Arc<Generations>,
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
            seen: Arc::new(Generations::new(redis.generation_check)),
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
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
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
            self.seen.set(tenant, generation);
        }
        self.local.invalidate_tenant(tenant);
        result
    }

    /// How many tenants' generations this instance remembers (see
    /// [Generations](SharedCache#generations)): bounded by how many
    /// tenants it served recently, not by how many it ever served.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::cache::{QueryCache, RedisTier, SharedCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    /// let cache = SharedCache::new(&QueryCache::new(100), &RedisTier::connect(&url, &namespace).await?);
    /// assert_eq!(cache.remembered_tenants(), 0);
    /// cache.invalidate_tenant(&fanout::TenantId::new("t1")?).await?;
    /// assert_eq!(cache.remembered_tenants(), 1);
    /// # Ok(()) }
    /// ```
    pub fn remembered_tenants(&self) -> usize {
        self.seen.len()
    }

    /// The tenant's generation in Redis, read at most once per
    /// `generation_check`; while Redis is unavailable, the last one read
    /// if it is remembered, else [`Generation::Unknown`].
    async fn generation(&self, tenant: &TenantId) -> Generation {
        let known = self.seen.get(tenant);
        if let Some(seen) = known
            && seen.at.elapsed() < self.redis.generation_check
        {
            return Generation::Known(seen.generation);
        }
        let asked = Instant::now();
        let Some(generation) = self.redis.get_generation(tenant).await else {
            return match known {
                Some(seen) => Generation::Known(seen.generation),
                None => self.seen.unknown(),
            };
        };
        let (generation, changed) = self.seen.read(tenant, generation, asked);
        if changed {
            // Not needed for correctness (the generation is in the local
            // key), but it retires the old values at once.
            self.local.invalidate_tenant(tenant);
        }
        generation
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
/// query's name, timeout and fallback, like [`Cached`](crate::cache::Cached).
///
/// The value type must be `Clone` and serde's `Serialize` and
/// `DeserializeOwned` (it is stored as MessagePack).
///
/// # Values written by other builds
///
/// A value read from Redis is either what was stored for this value type
/// or a miss (the query runs), never a value with its fields mixed up:
///
/// - Structs are stored with their field names, so a later build that
///   reorders fields reads them right, one that adds an `Option` field (or
///   one with `#[serde(default)]`) reads old values with it empty, one
///   that removes a field ignores it, and an `Option` field left out by
///   `#[serde(skip_serializing_if)]` reads back as `None` (another type of
///   skipped field needs `#[serde(default)]`, else the value is a miss).
/// - The key holds a fingerprint of the value type's name
///   (`std::any::type_name`), so a build whose query returns another type
///   never reads this one's values. (The name may change with the
///   compiler; then the values are misses once.)
/// - The key holds the [`schema`](Self::schema) version, for what names
///   cannot show: bump it when a field keeps its name but changes meaning,
///   or a tuple struct's fields (stored by position) change.
/// - Bytes that still do not decode (a renamed or retyped field under the
///   same version) are a miss, counted by
///   [`RedisTier::decode_failures`] and logged at WARN at most once per
///   30 s.
///
/// | found… | source |
/// |--------|--------|
/// | in this instance, younger than `ttl` | `Cached { age }` |
/// | in this instance, past its [`refresh_after`](CachePolicy::refresh_after) point | `Refreshing { age }`: served at once, reloaded in the background |
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
/// again; a query's outcome is never an error because of Redis, and a dead
/// or hung Redis makes a dashboard at most one call timeout slower. A Redis
/// that is slow but answers within the call timeout trips nothing: a widget
/// missing from both tiers then makes up to four calls in a row (the
/// tenant's generation, at most once per `generation_check`; the value; the
/// lock; the store), each up to the call timeout.
///
/// # Keys
///
/// | key | holds |
/// |-----|-------|
/// | `{namespace}:gen:{tenant}` | the tenant's generation (missing = 0), `INCR`ed by [`SharedCache::invalidate_tenant`] |
/// | `{namespace}:v2:{tenant}:{generation}:{query}:{key}:{type}:{schema}` | a value, the wall-clock time it was computed and how long that took (MessagePack), expiring after the policy's [`keep_for`](CachePolicy::keep_for) |
/// | `{namespace}:lock:{tenant}:{generation}:{query}:{key}:{type}:{schema}` | the lock of the instance computing that value (`SET NX PX`) |
///
/// `{type}` is the 64-bit FNV-1a hash of the value type's name, in 16 hex
/// digits, and `{schema}` the [`schema`](SharedCached::schema) version.
/// Version 0.1.0 wrote `v1` keys (structs without field names); they are
/// never read, and expire.
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
/// # Early refresh
///
/// So that the instances do not all find a value expired at the same
/// instant (and wait on the one recomputing it), a value is refreshed
/// shortly before it expires, by one instance, while the others keep
/// serving it: probabilistic early expiration, "XFetch" (Vattani,
/// Chierichetti and Lowenstein, VLDB 2015), combined with the key's lock.
/// Each value in Redis records how long it took to compute. Each read of
/// a value within its time to live, from either tier, makes the random
/// decision that [`EarlyRefresh`] describes (per query:
/// [`early_refresh`](Self::early_refresh); beta 1 by default); the odds
/// rise as expiry nears, faster for a value that was slow to compute.
/// A read that decides to refresh:
///
/// - takes the key's lock with `SET NX`, and reads the value, in one
///   round trip; it never waits on the lock;
/// - with the lock, runs the query (this caller waits for it, as on a
///   miss, under the query's timeout), stores the value in Redis and in
///   its in-process tier, and gets `Fresh`; if the query fails, it gets
///   the value it read, `Cached` (logged at WARN; if the value expired
///   meanwhile, what a failed miss gets: the value, marked stale), and the
///   lock is released for another try; if it times out, or the caller is
///   dropped,
///   the refresh stops and its lock lapses after the
///   [lock TTL](RedisTier::lock_ttl) (the caller that timed out gets what
///   a timed-out miss gets: the value, marked stale);
/// - without it (another instance is refreshing), or with Redis
///   unavailable, gets the value it read, `Cached`, at once;
/// - finding in Redis a value newer than the one it read (another instance
///   refreshed it), gets that one, `Cached`, and keeps it in its in-process
///   tier.
///
/// So every read but the refreshing one is served at once, and across
/// instances one computation per key refreshes it (a second only if the
/// lock expires first). What it costs: near expiry, a read that decides
/// makes one Redis round trip (the call timeout bounds it); a value is
/// recomputed before its time to live is up, by about `delta × beta ×
/// ln(reads in delta × beta)` for a value computed in `delta` (every read,
/// on every instance, draws: a key read 100 times a second, computed in
/// 300 ms, is refreshed about 1 s early at beta 1), and a value read from
/// a build without computation times (or computed in under a millisecond)
/// is only recomputed at expiry. Builds with and without early refresh share
/// values under the same `v2` keys, both ways: the computation time is
/// written after the value's MessagePack array, where a build without it
/// does not look, and a value without it reads as computed in no time.
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
/// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
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
    // Shared with the load in flight, which outlives any one caller.
    query: Arc<Q>,
    cache: SharedCache,
    policy: CachePolicy,
    key: Arc<str>,
    schema: u32,
    early: EarlyRefresh,
}

impl<Q> SharedCached<Q> {
    /// Serves `query` through `cache` under `policy`.
    ///
    /// # Examples
    ///
    /// See [`SharedCached`].
    pub fn new(query: Q, cache: &SharedCache, policy: CachePolicy) -> Self {
        Self {
            query: Arc::new(query),
            cache: cache.clone(),
            policy,
            key: Arc::from(""),
            schema: 0,
            early: EarlyRefresh::default(),
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
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// # let cache = SharedCache::new(&QueryCache::new(100), &RedisTier::connect(&url, "dashboards").await?);
    /// let this_month = SharedCached::new("query", &cache, CachePolicy::ttl(Duration::from_secs(60))).key("2026-11");
    /// # let _ = this_month;
    /// # Ok(()) }
    /// ```
    pub fn key(mut self, key: impl AsRef<str>) -> Self {
        self.key = Arc::from(key.as_ref());
        self
    }

    /// The version of the value's stored form (default 0), part of its
    /// Redis key: values stored under another version are never read.
    ///
    /// Field names already keep reordered, added and optional fields
    /// apart; bump the version when a change they cannot show ships: a
    /// field that keeps its name but changes meaning (euros to cents) or
    /// type, a renamed field, or reordered fields of a tuple struct. During
    /// a rolling deploy, the old and new builds then each compute and read
    /// their own values.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use fanout::cache::{CachePolicy, QueryCache, RedisTier, SharedCache, SharedCached};
    /// # use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
    /// # struct Revenue;
    /// # impl DashboardQuery for Revenue {
    /// #     type Output = i64;
    /// #     type Error = std::io::Error;
    /// #     fn name(&self) -> &'static str { "total_revenue" }
    /// #     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> { Ok(12_500_000) }
    /// #     fn fallback(&self) -> i64 { 0 }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    /// let redis = RedisTier::connect(&url, &namespace).await?;
    /// let policy = CachePolicy::ttl(Duration::from_secs(60));
    /// let (fan_out, tenant) = (FanOut::new(), TenantId::new("t1")?);
    /// let instance = || SharedCache::new(&QueryCache::new(100), &redis);
    ///
    /// // Release 1 stored euros; release 2 returns cents in the same type.
    /// let euros = SharedCached::new(Revenue, &instance(), policy);
    /// assert!(fan_out.run(&tenant, (&euros,)).await.0.is_fresh());
    /// let cents = SharedCached::new(Revenue, &instance(), policy).schema(2);
    /// let (outcome,) = fan_out.run(&tenant, (&cents,)).await;
    /// assert!(outcome.is_fresh()); // not release 1's euros
    /// let (outcome,) = fan_out.run(&tenant, (&SharedCached::new(Revenue, &instance(), policy).schema(2),)).await;
    /// assert!(matches!(outcome.source, Source::Cached { .. })); // release 2's own value
    /// # Ok(()) }
    /// ```
    pub fn schema(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    /// How this query's values in Redis are refreshed ahead of their
    /// expiry (default [`EarlyRefresh::default()`], beta 1);
    /// [`EarlyRefresh::OFF`] recomputes a value only once it has expired.
    /// See [Early refresh](SharedCached#early-refresh).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// use fanout::cache::{CachePolicy, EarlyRefresh, QueryCache, RedisTier, SharedCache, SharedCached};
    /// # use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
    /// # struct Report;
    /// # impl DashboardQuery for Report {
    /// #     type Output = i64;
    /// #     type Error = std::io::Error;
    /// #     fn name(&self) -> &'static str { "report" }
    /// #     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
    /// #         tokio::time::sleep(Duration::from_millis(20)).await; // takes 20 ms to compute
    /// #         Ok(42)
    /// #     }
    /// #     fn fallback(&self) -> i64 { 0 }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let url = throwaway::redis_url(); // REDIS_URL, or a throw-away server
    /// # let namespace = format!("doc-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    /// let redis = RedisTier::connect(&url, &namespace).await?;
    /// let policy = CachePolicy::ttl(Duration::from_secs(60));
    /// let (fan_out, tenant) = (FanOut::new(), TenantId::new("t1")?);
    /// let instance = || SharedCache::new(&QueryCache::new(100), &redis);
    ///
    /// let first = SharedCached::new(Report, &instance(), policy);
    /// assert!(fan_out.run(&tenant, (&first,)).await.0.is_fresh());
    ///
    /// // Off: a value within its time to live is always served.
    /// let off = SharedCached::new(Report, &instance(), policy).early_refresh(EarlyRefresh::OFF);
    /// assert!(matches!(fan_out.run(&tenant, (&off,)).await.0.source, Source::Cached { .. }));
    ///
    /// // An absurd beta: a 20 ms computation is refreshed minutes ahead, on
    /// // almost any read. This instance takes the lock and recomputes.
    /// let eager = SharedCached::new(Report, &instance(), policy)
    ///     .early_refresh(EarlyRefresh::new(1e9)?.seed(1));
    /// assert!(fan_out.run(&tenant, (&eager,)).await.0.is_fresh());
    /// # Ok(()) }
    /// ```
    pub fn early_refresh(mut self, early: EarlyRefresh) -> Self {
        self.early = early;
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

impl<Q> SharedCached<Q> {
    /// Another handle on the same query, cache and policy, for a load that
    /// outlives the caller that started it.
    fn handle(&self) -> Self {
        Self {
            query: Arc::clone(&self.query),
            cache: self.cache.clone(),
            policy: self.policy,
            key: Arc::clone(&self.key),
            schema: self.schema,
            early: self.early.clone(),
        }
    }
}

/// A value as the in-process tier holds it for a [`SharedCached`]: with
/// what early refresh needs to know about it.
#[derive(Clone)]
struct Stamped<T> {
    value: T,
    /// When it was computed, in wall-clock ms (on any instance).
    computed_at_ms: u64,
    /// How long it took to compute.
    computed_in: Duration,
}

impl<T> From<Stored<T>> for Stamped<T> {
    fn from(stored: Stored<T>) -> Self {
        Self {
            value: stored.value,
            computed_at_ms: stored.computed_at_ms,
            computed_in: stored.computed_in,
        }
    }
}

/// A value read from Redis, as a load's result.
fn cached<T>(stored: Stored<T>) -> Loaded<Stamped<T>> {
    let age = stored.age;
    Loaded::Cached {
        value: Stamped::from(stored),
        age,
    }
}

impl<Q> SharedCached<Q>
where
    Q: DashboardQuery,
    Q::Output: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Past the in-process tier: Redis, the lock, or the query.
    ///
    /// For a refresh-ahead reload (`newer_than`: the refresh point), a value
    /// in Redis counts only if it is younger than that (another instance
    /// reloaded it); otherwise this instance takes the key's lock without
    /// waiting and recomputes, or, when another instance holds the lock,
    /// gives the old value back (the in-process tier keeps its own and
    /// looks again a second later).
    async fn compute(
        &self,
        ctx: QueryContext,
        generation: Option<u64>,
        newer_than: Option<Duration>,
    ) -> Result<Loaded<Stamped<Q::Output>>, Q::Error> {
        let redis = &self.cache.redis;
        let Some(generation) = generation else {
            return self.run_timed(ctx).await.map(Loaded::Fresh);
        };
        let name = self.query.name();
        let keys = self.keys(ctx.tenant(), generation);
        let ttl = self.policy.time_to_live();
        match redis.get(&keys.value).await {
            None => {
                return self
                    .run_and_store(ctx, &keys, None)
                    .await
                    .map(Loaded::Fresh);
            }
            Some(Some(bytes)) => {
                if let Some(stored) = redis.decode_within(&bytes, ttl, name) {
                    let Some(fresh_for) = newer_than.filter(|&f| stored.age >= f) else {
                        return Ok(cached(stored));
                    };
                    let _ = fresh_for;
                    let token = lock_token();
                    let lock_ttl = self.lock_ttl(&ctx);
                    return match redis.lock(&keys, &token, lock_ttl).await {
                        Some(true) => self
                            .run_and_store(ctx, &keys, Some(&token))
                            .await
                            .map(Loaded::Fresh),
                        None => self
                            .run_and_store(ctx, &keys, None)
                            .await
                            .map(Loaded::Fresh),
                        Some(false) => Ok(cached(stored)),
                    };
                }
            }
            Some(None) => {}
        }
        let token = lock_token();
        let lock_ttl = self.lock_ttl(&ctx);
        match redis.lock(&keys, &token, lock_ttl).await {
            Some(true) => {
                return self
                    .run_and_store(ctx, &keys, Some(&token))
                    .await
                    .map(Loaded::Fresh);
            }
            None => {
                return self
                    .run_and_store(ctx, &keys, None)
                    .await
                    .map(Loaded::Fresh);
            }
            Some(false) => {}
        }
        // Another instance is computing: wait a bounded time for its value,
        // or take over its lock if it gives up without one.
        // No end (`Duration::MAX`): wait until the value or a free lock;
        // the caller's timeout or deadline still bounds it.
        let until = Instant::now().checked_add(redis.lock_wait);
        loop {
            let now = Instant::now();
            let pause = match until {
                Some(until) if now >= until => break,
                Some(until) => POLL_INTERVAL.min(until - now),
                None => POLL_INTERVAL,
            };
            sleep(pause).await;
            let Some((value, locked)) = redis.poll(&keys).await else {
                break;
            };
            if let Some(bytes) = value
                && let Some(stored) = redis.decode_within(&bytes, ttl, name)
            {
                return Ok(cached(stored));
            }
            if !locked && redis.lock(&keys, &token, lock_ttl).await == Some(true) {
                return self
                    .run_and_store(ctx, &keys, Some(&token))
                    .await
                    .map(Loaded::Fresh);
            }
        }
        self.run_and_store(ctx, &keys, None)
            .await
            .map(Loaded::Fresh)
    }

    /// A value read from either tier that [`EarlyRefresh`] says to refresh
    /// now: take the key's lock without waiting; with it, run the query and
    /// store its value in both tiers; without it (another instance is
    /// refreshing, or Redis is unavailable), serve the value read. A newer
    /// value found in Redis (another instance refreshed it) is served and
    /// replaces this instance's. A failed query serves the value read if it
    /// is still within its time to live, and is an error otherwise (the
    /// caller then gets the value marked stale, as on a failed miss).
    async fn refresh_early(
        &self,
        ctx: QueryContext,
        generation: u64,
        replacement: Replacement,
        read: Stamped<Q::Output>,
        age: Duration,
    ) -> Result<Loaded<Q::Output>, LoadError> {
        let redis = &self.cache.redis;
        let name = self.query.name();
        let keys = self.keys(ctx.tenant(), generation);
        let token = lock_token();
        let read_at = Instant::now();
        let as_read = |read: Stamped<Q::Output>| Loaded::Cached {
            value: read.value,
            age: age.saturating_add(read_at.elapsed()),
        };
        let Some((locked, bytes)) = redis.lock_and_get(&keys, &token, self.lock_ttl(&ctx)).await
        else {
            return Ok(as_read(read));
        };
        let newer = bytes
            .and_then(|bytes| {
                redis.decode_within::<Q::Output>(&bytes, self.policy.time_to_live(), name)
            })
            .filter(|stored| stored.computed_at_ms > read.computed_at_ms);
        if let Some(newer) = newer {
            if locked {
                redis
                    .store(&keys, None, self.policy.keep_for(), Some(&token))
                    .await;
            }
            let age = newer.age;
            let newer = Stamped::from(newer);
            let value = newer.value.clone();
            self.cache
                .local
                .replace(replacement, newer, age, self.policy)
                .await;
            return Ok(Loaded::Cached { value, age });
        }
        if !locked {
            return Ok(as_read(read));
        }
        let tenant = ctx.tenant().clone();
        match self.run_and_store(ctx, &keys, Some(&token)).await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                self.cache
                    .local
                    .replace(replacement, fresh, Duration::ZERO, self.policy)
                    .await;
                Ok(Loaded::Fresh(value))
            }
            Err(error) => {
                let served = as_read(read);
                if matches!(served, Loaded::Cached { age, .. } if age < self.policy.time_to_live())
                {
                    tracing::warn!(
                        %tenant,
                        query = name,
                        %error,
                        "early refresh failed; serving the cached value, still within its time to live"
                    );
                    Ok(served)
                } else {
                    // Expired meanwhile: a failure, logged where the caller's
                    // fallback is chosen.
                    Err(LoadError::Query(Arc::new(error)))
                }
            }
        }
    }

    /// The query's value, and how long it took.
    async fn run_timed(&self, ctx: QueryContext) -> Result<Stamped<Q::Output>, Q::Error> {
        let started = Instant::now();
        let value = self.query.run(ctx).await?;
        Ok(Stamped {
            value,
            computed_at_ms: now_ms(),
            computed_in: started.elapsed(),
        })
    }

    /// Runs the query and stores its value in Redis, releasing the lock if
    /// `token` holds it.
    async fn run_and_store(
        &self,
        ctx: QueryContext,
        keys: &Keys,
        token: Option<&str>,
    ) -> Result<Stamped<Q::Output>, Q::Error> {
        let result = self.run_timed(ctx).await;
        let bytes = match &result {
            Ok(fresh) => {
                let computed_in_ms =
                    u64::try_from(fresh.computed_in.as_millis()).unwrap_or(u64::MAX);
                match encode(&fresh.value, fresh.computed_at_ms, computed_in_ms) {
                    Ok(bytes) => Some(bytes),
                    Err(error) => {
                        tracing::debug!(query = self.query.name(), %error, "cannot encode a value for the shared cache");
                        None
                    }
                }
            }
            Err(_) => None,
        };
        self.cache
            .redis
            .store(keys, bytes, self.policy.keep_for(), token)
            .await;
        result
    }
}

impl<Q: DashboardQuery> SharedCached<Q> {
    /// The value's and the lock's keys in Redis.
    fn keys(&self, tenant: &TenantId, generation: u64) -> Keys {
        let schema = Schema::of::<Q::Output>(self.schema);
        self.cache
            .redis
            .keys(tenant, generation, self.query.name(), &self.key, schema)
    }

    /// How long a lock taken for this call may be held.
    fn lock_ttl(&self, ctx: &QueryContext) -> Duration {
        self.cache
            .redis
            .lock_ttl
            .or_else(|| ctx.remaining())
            .unwrap_or(DEFAULT_LOCK_TTL)
    }
}

impl<Q> DashboardQuery for SharedCached<Q>
where
    Q: DashboardQuery + 'static,
    Q::Output: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Output = Q::Output;
    type Error = LoadError;

    fn name(&self) -> &'static str {
        self.query.name()
    }

    async fn run(&self, ctx: QueryContext) -> Result<Q::Output, LoadError> {
        Ok(self.load(ctx).await?.into_value())
    }

    fn fallback(&self) -> Q::Output {
        self.query.fallback()
    }

    fn timeout(&self) -> Option<Duration> {
        self.query.timeout()
    }

    async fn load(&self, ctx: QueryContext) -> Result<Loaded<Q::Output>, LoadError> {
        let name = self.query.name();
        let generation = self.cache.generation(ctx.tenant()).await;
        let local_key = generation.local_key(&self.key);
        let known = generation.known();
        let replacement = self.cache.local.replacement(ctx.tenant(), name, &local_key);
        let refresh_ctx = ctx.clone();
        let this = self.handle();
        let loaded = self
            .cache
            .local
            .load_with(
                name,
                &local_key,
                self.policy,
                self.query.timeout(),
                ctx,
                |ctx, newer_than| async move { this.compute(ctx, known, newer_than).await },
            )
            .await?;
        match (loaded, known) {
            (Loaded::Fresh(fresh), _) => Ok(Loaded::Fresh(fresh.value)),
            (Loaded::Cached { value, age }, Some(generation))
                if self
                    .early
                    .is_due(age, value.computed_in, self.policy.time_to_live()) =>
            {
                self.refresh_early(refresh_ctx, generation, replacement, value, age)
                    .await
            }
            (Loaded::Cached { value, age }, _) => Ok(Loaded::Cached {
                value: value.value,
                age,
            }),
            // Already being reloaded in the background (refresh-ahead).
            (Loaded::Refreshing { value, age }, _) => Ok(Loaded::Refreshing {
                value: value.value,
                age,
            }),
        }
    }

    async fn stale(&self, tenant: &TenantId) -> Option<(Q::Output, Duration)> {
        let name = self.query.name();
        let generation = self.cache.generation(tenant).await;
        let local_key = generation.local_key(&self.key);
        let local =
            self.cache
                .local
                .stale::<Stamped<Q::Output>>(tenant, name, &local_key, self.policy);
        if let Some((stamped, age)) = local.await {
            return Some((stamped.value, age));
        }
        let generation = generation.known()?;
        let keys = self.keys(tenant, generation);
        let bytes = self.cache.redis.get(&keys.value).await??;
        let stored =
            self.cache
                .redis
                .decode_within::<Q::Output>(&bytes, self.policy.keep_for(), name)?;
        Some((stored.value, stored.age))
    }
}
