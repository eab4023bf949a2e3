//! [`QueryCache`]: the in-process tier, on moka.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use tokio::time::Instant;

use super::CachePolicy;
use crate::{DashboardQuery, Loaded, QueryContext, TenantId};

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
    generations: RwLock<HashMap<TenantId, u64>>,
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
}

impl Entry {
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
                generations: RwLock::default(),
            }),
        }
    }

    /// Makes every value cached for `tenant` unreachable, in O(1): the
    /// tenant moves to a new generation, which every key includes; the old
    /// entries age out.
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = fanout::cache::QueryCache::new(100);
    /// let tenant = fanout::TenantId::new("t1")?;
    /// assert_eq!(cache.generation(&tenant), 0);
    /// cache.invalidate_tenant(&tenant);
    /// assert_eq!(cache.generation(&tenant), 1);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn invalidate_tenant(&self, tenant: &TenantId) {
        let mut generations = self
            .inner
            .generations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *generations.entry(tenant.clone()).or_insert(0) += 1;
    }

    /// The tenant's current generation: how many times it was invalidated.
    ///
    /// # Examples
    ///
    /// See [`invalidate_tenant`](Self::invalidate_tenant).
    pub fn generation(&self, tenant: &TenantId) -> u64 {
        let generations = self
            .inner
            .generations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        generations.get(tenant).copied().unwrap_or(0)
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
        query: &Q,
        key: &Arc<str>,
        policy: CachePolicy,
        ctx: QueryContext,
    ) -> Result<Loaded<Q::Output>, Q::Error>
    where
        Q: DashboardQuery,
        Q::Output: Clone + Sync + 'static,
    {
        self.load_with(query.name(), key, policy, ctx, |ctx| async move {
            query.run(ctx).await.map(Loaded::Fresh)
        })
        .await
    }

    /// [`load`](Self::load) with the value's source given: a value younger
    /// than the policy's `ttl` stored here, or else `compute`, run once for
    /// every caller waiting on the same key. `compute` returns
    /// `Loaded::Fresh` for a value it computed and `Loaded::Cached { age }`
    /// for one it found elsewhere (the shared tier,
    /// [`SharedCached`](super::SharedCached)); either is stored, the latter
    /// as `age` old, so it expires here when it does there.
    pub(super) async fn load_with<T, E, F, Fut>(
        &self,
        query: &'static str,
        key: &Arc<str>,
        policy: CachePolicy,
        ctx: QueryContext,
        compute: F,
    ) -> Result<Loaded<T>, E>
    where
        T: Clone + Send + Sync + 'static,
        E: Send + Sync + 'static,
        F: FnOnce(QueryContext) -> Fut,
        Fut: Future<Output = Result<Loaded<T>, E>>,
    {
        let key = self.key(ctx.tenant(), query, key);
        let ttl = policy.time_to_live();
        if let Some(entry) = self.inner.entries.get(&key).await
            && let Some((value, age)) = entry.value_within::<T>(ttl)
        {
            return Ok(Loaded::Cached { value, age });
        }
        // moka runs one compute per key at a time; a caller that waited
        // finds the value the one before it stored. A caller cancelled or
        // panicking mid-compute releases the key to the next.
        let mut computed_here = false;
        let computed_flag = &mut computed_here;
        let computed = self
            .inner
            .entries
            .entry(key)
            .and_try_compute_with(|existing| async move {
                if existing.is_some_and(|e| e.value().value_within::<T>(ttl).is_some()) {
                    return Ok(Op::Nop);
                }
                let (value, age) = match compute(ctx).await? {
                    Loaded::Fresh(value) => {
                        *computed_flag = true;
                        (value, Duration::ZERO)
                    }
                    Loaded::Cached { value, age } => (value, age),
                };
                let now = Instant::now();
                Ok(Op::Put(Entry {
                    value: Arc::new(value),
                    stored_at: now.checked_sub(age).unwrap_or(now),
                    keep_for: policy.keep_for().saturating_sub(age),
                }))
            })
            .await?;
        let loaded = match computed {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => entry
                .value()
                .value_within::<T>(Duration::MAX)
                .map(|(value, age)| {
                    if computed_here {
                        Loaded::Fresh(value)
                    } else {
                        Loaded::Cached { value, age }
                    }
                }),
            // Computed by the caller before this one, moments ago.
            CompResult::Unchanged(entry) => entry
                .value()
                .value_within::<T>(Duration::MAX)
                .map(|(value, age)| Loaded::Cached { value, age }),
            CompResult::StillNone(_) | CompResult::Removed(_) => None,
        };
        Ok(loaded.unwrap_or_else(|| unreachable_entry(query)))
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

/// The compute closure above returns `Nop` only for an existing entry of the
/// right type and otherwise `Put`s one, so every result holds a value of
/// that type.
fn unreachable_entry<T>(query: &str) -> T {
    unreachable!("cache compute for {query} left no usable value")
}

impl fmt::Debug for QueryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryCache")
            .field("entries", &self.inner.entries.entry_count())
            .finish_non_exhaustive()
    }
}
