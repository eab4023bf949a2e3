//! [`QueryCache`]: the in-process tier, on moka.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

use super::CachePolicy;
use super::generations::Generations;
use super::load::{Fetched, LoadError, Loads};
use crate::drive::earliest;
use crate::{DashboardQuery, Loaded, QueryContext, TenantId};

/// How long after a failed background reload the next one may start: the
/// old value is served meanwhile (until its TTL), and a failing database
/// is not asked again on every request.
pub(super) const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// An in-process cache of dashboard query values, shared by every
/// [`Cached`](super::Cached) query of a service: bounded by entry count,
/// each entry kept for its policy's [`keep_for`](CachePolicy::keep_for).
///
/// Cloning is cheap and shares the cache. Ages are measured on tokio's
/// clock, so tests can drive them with `tokio::time::pause`.
///
/// # Examples
///
/// ```
/// let cache = fanout::cache::QueryCache::new(10_000);
/// let shared = cache.clone(); // the same entries
/// # let _ = shared;
/// ```
#[derive(Clone)]
pub struct QueryCache {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Cache<Key, Entry>,
    generations: Generations,
    loads: Arc<Loads<Key, Entry>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    tenant: TenantId,
    generation: u64,
    query: &'static str,
    key: Arc<str>,
}

/// A stored value, of whatever type its query returns.
#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    stored_at: Instant,
    keep_for: Duration,
    /// Shared by every copy of the entry: when a reload may start again
    /// after one failed.
    retry_at: Arc<Mutex<Option<Instant>>>,
}

impl Entry {
    /// `value`, computed `age` ago, kept as `policy` says.
    fn new<T: Send + Sync + 'static>(value: T, age: Duration, policy: CachePolicy) -> Self {
        let now = Instant::now();
        Self {
            value: Arc::new(value),
            stored_at: now.checked_sub(age).unwrap_or(now),
            keep_for: policy.keep_for().saturating_sub(age),
            retry_at: Arc::default(),
        }
    }

    fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }

    /// The value, if it is a `T` younger than `limit`.
    fn value_within<T: Clone + 'static>(&self, limit: Duration) -> Option<(T, Duration)> {
        let age = self.age();
        let value = self.value.downcast_ref::<T>()?;
        (age < limit).then(|| (value.clone(), age))
    }
}

/// Evicts each entry once its policy no longer allows serving it.
struct KeepFor;

impl moka::Expiry<Key, Entry> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Entry,
        _updated_at: std::time::Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }
}

impl QueryCache {
    /// A cache of at most `max_entries` values.
    ///
    /// # Examples
    ///
    /// See [`QueryCache`].
    pub fn new(max_entries: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(KeepFor)
            .build();
        Self {
            inner: Arc::new(Inner {
                entries,
                generations: Generations::default(),
                loads: Arc::default(),
            }),
        }
    }

    /// Makes every value cached for `tenant` unreachable, in O(1) (amortised):
    /// the tenant moves to a new generation, which every key includes; the
    /// old entries age out. A load running for the tenant at that moment
    /// stores nothing.
    ///
    /// The cache remembers an invalidated tenant's generation only until
    /// every value stored before the invalidation has expired (the longest
    /// `keep_for` stored, plus a minute); then the tenant is back at
    /// generation 0. So memory stays bounded by the tenants invalidated
    /// recently, not by every tenant ever seen.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = fanout::cache::QueryCache::new(100);
    /// let tenant = fanout::TenantId::new("t1")?;
    /// assert_eq!(cache.generation(&tenant), 0);
    /// cache.invalidate_tenant(&tenant);
    /// assert_ne!(cache.generation(&tenant), 0);
    /// assert_eq!(cache.invalidated_tenants(), 1);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn invalidate_tenant(&self, tenant: &TenantId) {
        self.inner.generations.invalidate(tenant);
    }

    /// How many invalidated tenants the cache still remembers (see
    /// [`invalidate_tenant`](Self::invalidate_tenant)).
    ///
    /// # Examples
    ///
    /// See [`invalidate_tenant`](Self::invalidate_tenant).
    pub fn invalidated_tenants(&self) -> usize {
        self.inner.generations.len()
    }

    /// The tenant's current generation: 0 until it is invalidated, then a
    /// number this cache never gave out before.
    ///
    /// # Examples
    ///
    /// See [`invalidate_tenant`](Self::invalidate_tenant).
    pub fn generation(&self, tenant: &TenantId) -> u64 {
        self.inner.generation_of(tenant)
    }

    /// How many loads are running now (each shared by all its callers).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::cache::QueryCache::new(100).loads_in_flight(), 0);
    /// ```
    pub fn loads_in_flight(&self) -> usize {
        self.inner.loads.len()
    }

    /// How many values are stored (approximate: moka counts lazily).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::cache::QueryCache::new(100).entry_count(), 0);
    /// ```
    pub fn entry_count(&self) -> u64 {
        self.inner.entries.entry_count()
    }

    fn key(&self, tenant: &TenantId, query: &'static str, key: &Arc<str>) -> Key {
        Key {
            tenant: tenant.clone(),
            generation: self.generation(tenant),
            query,
            key: Arc::clone(key),
        }
    }

    /// A fresh value, or the query run once for every caller waiting on the
    /// same key; see [`Cached`](super::Cached).
    pub(super) async fn load<Q>(
        &self,
        query: &Arc<Q>,
        key: &Arc<str>,
        policy: CachePolicy,
        ctx: QueryContext,
    ) -> Result<Loaded<Q::Output>, LoadError>
    where
        Q: DashboardQuery + 'static,
        Q::Output: Clone + Sync + 'static,
    {
        let query = Arc::clone(query);
        let timeout = query.timeout();
        self.load_with(
            query.name(),
            key,
            policy,
            timeout,
            ctx,
            move |ctx, _| async move { query.run(ctx).await.map(Loaded::Fresh) },
        )
        .await
    }

    /// [`load`](Self::load) with the value's source given: a value younger
    /// than the policy's `ttl` stored here, or else the one load in flight
    /// for this key, started with `compute` if there is none. `compute`
    /// returns `Loaded::Fresh` for a value it computed and `Loaded::Cached
    /// { age }` for one it found elsewhere (the shared tier,
    /// [`SharedCached`](super::SharedCached)); either is stored, the latter
    /// as `age` old, so it expires here when it does there.
    ///
    /// The caller that starts the load gets `Fresh` for a value computed
    /// now; callers that joined it get `Cached`, as if they had arrived just
    /// after. The load runs under the starting caller's deadline.
    ///
    /// A stored value past the policy's refresh point is served at once,
    /// as `Refreshing` while a background reload (under `reload_timeout`,
    /// the query's own) replaces it; see [`refresh`](Self::refresh).
    pub(super) async fn load_with<T, E, F, Fut>(
        &self,
        query: &'static str,
        key: &Arc<str>,
        policy: CachePolicy,
        reload_timeout: Option<Duration>,
        ctx: QueryContext,
        compute: F,
    ) -> Result<Loaded<T>, LoadError>
    where
        T: Clone + Send + Sync + 'static,
        E: std::error::Error + Send + Sync + 'static,
        F: FnOnce(QueryContext, Option<Duration>) -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        let key = self.key(ctx.tenant(), query, key);
        let ttl = policy.time_to_live();
        if let Some(entry) = self.inner.entries.get(&key).await
            && let Some((value, age)) = entry.value_within::<T>(ttl)
        {
            let due = policy.refresh_point().is_some_and(|after| age >= after);
            if due && self.refresh(key, &entry, policy, reload_timeout, ctx.tenant(), compute) {
                return Ok(Loaded::Refreshing { value, age });
            }
            return Ok(Loaded::Cached { value, age });
        }
        let deadline = ctx.deadline();
        let mut start = Some((ctx, compute));
        let (fetched, started_here) = loop {
            let max_age = self.inner.generations.record_lifetime();
            let joined = self
                .inner
                .loads
                .join_or_start(&key, deadline, max_age, |fresh_until| {
                    let (ctx, compute) = start.take().expect("a caller starts at most one load");
                    let inner = Arc::clone(&self.inner);
                    let key = key.clone();
                    let work = compute(ctx, None);
                    async move {
                        inner
                            .fetch::<T, E, _>(key, ttl, false, policy, fresh_until, work)
                            .await
                    }
                });
            let result = joined.load.await;
            // A load that timed out under an earlier deadline than this
            // caller's: load again, with this caller's time.
            let outlived = match (deadline, joined.deadline) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(mine), Some(its)) => mine > its,
            };
            match result {
                Err(LoadError::TimedOut) if outlived && start.is_some() => continue,
                result => break (result?, joined.started_here),
            }
        };
        let (value, age) = fetched
            .value
            .value_within::<T>(Duration::MAX)
            .ok_or_else(|| type_clash(query))?;
        Ok(if fetched.computed && started_here {
            Loaded::Fresh(value)
        } else {
            Loaded::Cached { value, age }
        })
    }
    /// Makes sure a reload of `key`, whose stored `entry` is past its
    /// refresh point, is in flight: joins the one running, or starts one
    /// on a task of its own, under `reload_timeout` and never past the
    /// value's TTL (a hung reload cannot hold up the callers that come
    /// after the value expires: they load again). Returns whether a reload
    /// is in flight; not when one failed less than [`REFRESH_RETRY`] ago,
    /// nor outside a Tokio runtime.
    ///
    /// The reload is one shared load, like any other: callers that find
    /// the value expired while it runs wait on it, and it stores its value
    /// only while the tenant's generation is unchanged.
    fn refresh<T, E, F, Fut>(
        &self,
        key: Key,
        entry: &Entry,
        policy: CachePolicy,
        reload_timeout: Option<Duration>,
        tenant: &TenantId,
        compute: F,
    ) -> bool
    where
        T: Clone + Send + Sync + 'static,
        E: std::error::Error + Send + Sync + 'static,
        F: FnOnce(QueryContext, Option<Duration>) -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>> + Send + 'static,
    {
        let now = Instant::now();
        let retry_at = Arc::clone(&entry.retry_at);
        if retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| now < at)
        {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let expires_at = entry.stored_at.checked_add(policy.time_to_live());
        let deadline = earliest(reload_timeout.and_then(|t| now.checked_add(t)), expires_at);
        let fresh_for = policy.refresh_point().unwrap_or(Duration::ZERO);
        let max_age = self.inner.generations.record_lifetime();
        let joined = self
            .inner
            .loads
            .join_or_start(&key, deadline, max_age, |fresh_until| {
                let ctx = QueryContext::new(tenant.clone(), deadline);
                let work = compute(ctx, Some(fresh_for));
                let inner = Arc::clone(&self.inner);
                let key = key.clone();
                let retry_at = Arc::clone(&retry_at);
                async move {
                    let fetched = inner
                        .fetch::<T, E, _>(key, fresh_for, true, policy, fresh_until, work)
                        .await;
                    // Noted inside the load, before it leaves the table: no
                    // caller can start another reload in between.
                    if fetched.is_err() {
                        *retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
                            Instant::now().checked_add(REFRESH_RETRY);
                    }
                    fetched
                }
            });
        if joined.started_here {
            let load = joined.load;
            runtime.spawn(async move {
                if let Err(error) = load.await {
                    if matches!(&error, LoadError::Query(e) if e.is::<NotNewer>()) {
                        tracing::debug!("another instance is reloading this value; looking again in a second");
                    } else {
                        tracing::warn!(%error, "background cache reload failed; serving the old value until its TTL");
                    }
                }
            });
        }
        true
    }

    /// The last good value, while the policy allows serving it stale.
    pub(super) async fn stale<T: Clone + Send + Sync + 'static>(
        &self,
        tenant: &TenantId,
        query: &'static str,
        key: &Arc<str>,
        policy: CachePolicy,
    ) -> Option<(T, Duration)> {
        let key = self.key(tenant, query, key);
        let entry = self.inner.entries.get(&key).await?;
        entry.value_within::<T>(policy.keep_for())
    }
}

impl Inner {
    /// The body of a shared load: a value younger than `fresh_for` stored
    /// since the caller looked (by a load that ended just before), or
    /// `work`'s, stored while the tenant's generation is still the key's.
    async fn fetch<T, E, W>(
        &self,
        key: Key,
        fresh_for: Duration,
        refreshing: bool,
        policy: CachePolicy,
        fresh_until: Option<Instant>,
        work: W,
    ) -> Result<Fetched<Entry>, LoadError>
    where
        T: Clone + Send + Sync + 'static,
        E: std::error::Error + Send + Sync + 'static,
        W: Future<Output = Result<Loaded<T>, E>>,
    {
        if let Some(entry) = self.entries.get(&key).await
            && entry.value_within::<T>(fresh_for).is_some()
        {
            return Ok(Fetched {
                value: entry,
                computed: false,
            });
        }
        let (value, age, computed) = match work.await {
            Ok(Loaded::Fresh(value)) => (value, Duration::ZERO, true),
            Ok(Loaded::Cached { value, age } | Loaded::Refreshing { value, age }) => {
                (value, age, false)
            }
            Err(error) => return Err(LoadError::Query(Arc::new(error))),
        };
        if refreshing && !computed && age >= fresh_for {
            // A refresh-ahead reload that found, in a tier behind this
            // one, only a value as old as the one it was to replace: no
            // refresh, and nothing to store.
            return Err(LoadError::Query(Arc::new(NotNewer)));
        }
        let entry = Entry::new(value, age, policy);
        self.store_if_current(key, entry.clone(), fresh_until).await;
        Ok(Fetched {
            value: entry,
            computed,
        })
    }

    /// Stores `entry` under `key` unless the tenant was invalidated since
    /// the key was made. A load that ran past `fresh_until` (longer than a
    /// generation record lives) may have outlived the record of an
    /// invalidation: it stores nothing either.
    async fn store_if_current(&self, key: Key, entry: Entry, fresh_until: Option<Instant>) {
        let fresh_enough = fresh_until.is_none_or(|until| Instant::now() < until);
        if fresh_enough && self.generation_of(&key.tenant) == key.generation {
            self.generations.stored(entry.keep_for);
            self.entries.insert(key, entry).await;
        }
    }

    fn generation_of(&self, tenant: &TenantId) -> u64 {
        self.generations.current(tenant)
    }
}

/// A refresh-ahead reload found, in a tier behind this one, only a value
/// no younger than the one it was to replace.
#[derive(Debug, thiserror::Error)]
#[error("no newer value yet")]
struct NotNewer;

/// A load joined under this query's name gave a value of another type: two
/// queries of different types share a name (and key), which the docs of
/// [`Cached`](super::Cached) forbid.
fn type_clash(query: &str) -> LoadError {
    let message = format!("two cached queries of different types share the name {query:?}");
    LoadError::Query(Arc::new(std::io::Error::other(message)))
}

impl fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCache")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}

/// A value found or computed outside a load (an early refresh through the
/// shared tier, [`SharedCached`](super::SharedCached)), to replace the one
/// stored for a key: the key and freshness limit as of when the caller
/// read the old value, so a tenant invalidated since keeps none of it.
#[cfg(feature = "redis")]
pub(super) struct Replacement {
    key: Key,
    fresh_until: Option<Instant>,
}

#[cfg(feature = "redis")]
impl QueryCache {
    /// The key `replace` will store under, taken now.
    pub(super) fn replacement(
        &self,
        tenant: &TenantId,
        query: &'static str,
        key: &Arc<str>,
    ) -> Replacement {
        Replacement {
            key: self.key(tenant, query, key),
            fresh_until: Instant::now().checked_add(self.inner.generations.record_lifetime()),
        }
    }

    /// Stores `value`, `age` old, in place of what `replacement`'s key
    /// holds, by the same rules as a load's value: not if the tenant was
    /// invalidated here since `replacement` was taken.
    pub(super) async fn replace<T: Send + Sync + 'static>(
        &self,
        replacement: Replacement,
        value: T,
        age: Duration,
        policy: CachePolicy,
    ) {
        let entry = Entry::new(value, age, policy);
        let Replacement { key, fresh_until } = replacement;
        self.inner.store_if_current(key, entry, fresh_until).await;
    }
}
