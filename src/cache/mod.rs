//! Caching for dashboard queries (feature `cache`): a time to live per
//! query, one execution per (tenant, query) however many callers ask at
//! once, and the last good value, marked stale, when the query fails.
//!
//! Wrap a query in [`Cached`] with a [`CachePolicy`] and a shared
//! [`QueryCache`]; queries that are not wrapped are untouched. A cached
//! outcome's [`Source`](crate::Source) says where its value came from:
//!
//! | the query…                                     | source |
//! |------------------------------------------------|--------|
//! | has a value younger than its `ttl`             | `Cached { age }`, without running |
//! | has one past its [`refresh_after`](CachePolicy::refresh_after) point, younger than `ttl` | `Refreshing { age }`, without waiting; one background reload replaces it |
//! | has none, and runs and succeeds                | `Fresh`; the value is stored |
//! | fails, with a value younger than `ttl + stale_if_error` | `Stale { age, cause }` |
//! | fails, with nothing usable                     | `Fallback(cause)` |
//!
//! Values never cross tenants: every key holds the tenant and its
//! generation, and [`QueryCache::invalidate_tenant`] moves a tenant to a new
//! generation in O(1). A failure is never stored.
//!
//! With the feature `redis`, [`SharedCached`] adds a shared tier for several
//! instances of a service: the in-process tier first, then Redis, then the
//! query, with at most one instance computing a key at a time. Every Redis
//! call has a short timeout, and a slow or dead Redis degrades to the
//! in-process tier and the database with one WARN, never an error; see
//! [`RedisTier`].
//!
//! Shortly before a shared value expires, one instance recomputes it while
//! the others keep serving it, so that readers need not wait at expiry
//! ([`EarlyRefresh`], "XFetch").
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use fanout::cache::{CachePolicy, Cached, QueryCache};
//! use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
//!
//! #[derive(Default)]
//! struct Revenue { runs: AtomicUsize }
//!
//! impl DashboardQuery for Revenue {
//!     type Output = i64;
//!     type Error = std::io::Error;
//!     fn name(&self) -> &'static str { "total_revenue" }
//!     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
//!         self.runs.fetch_add(1, Ordering::SeqCst);
//!         tokio::time::sleep(Duration::from_millis(250)).await;
//!         Ok(125_000)
//!     }
//!     fn fallback(&self) -> i64 { 0 }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), fanout::InvalidTenantId> {
//! let cache = QueryCache::new(10_000);
//! let policy = CachePolicy::ttl(Duration::from_secs(30)).stale_if_error(Duration::from_secs(600));
//! let revenue = Cached::new(Revenue::default(), &cache, policy);
//! let (fan_out, tenant) = (FanOut::new(), TenantId::new("creche-1")?);
//!
//! // A hundred users open the page at once: one execution.
//! let pages = (0..100).map(|_| fan_out.run(&tenant, (&revenue,)));
//! let outcomes = futures_util::future::join_all(pages).await;
//! assert!(outcomes.iter().all(|(o,)| o.value == 125_000));
//! assert_eq!(revenue.inner().runs.load(Ordering::SeqCst), 1);
//!
//! tokio::time::advance(Duration::from_secs(10)).await;
//! let (again,) = fan_out.run(&tenant, (&revenue,)).await;
//! assert!(matches!(again.source, Source::Cached { age } if age == Duration::from_secs(10)));
//! # Ok(()) }
//! ```

mod generations;
mod load;
mod local;
#[cfg(feature = "redis")]
mod redis;
mod warm;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{EarlyRefresh, InvalidEarlyRefresh};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisTier, RedisTierError, SharedCache, SharedCached};
pub use load::LoadError;
pub use local::QueryCache;
pub use warm::{WarmSummary, warm};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{DashboardQuery, Loaded, QueryContext, TenantId};

/// How long a query's value may be served from the cache.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::cache::CachePolicy;
///
/// // Fresh for 30 s; after that, still shown (marked stale) for up to 10
/// // minutes while the query fails.
/// let policy = CachePolicy::ttl(Duration::from_secs(30)).stale_if_error(Duration::from_secs(600));
/// assert_eq!(policy.keep_for(), Duration::from_secs(630));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    ttl: Duration,
    stale_if_error: Duration,
    refresh_after: Option<Duration>,
}

impl CachePolicy {
    /// Serve a value for `ttl` after it was computed; no stale-if-error.
    ///
    /// # Examples
    ///
    /// See [`CachePolicy`].
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_if_error: Duration::ZERO,
            refresh_after: None,
        }
    }

    /// Refresh-ahead: a value older than `after` (and younger than its
    /// `ttl`) is still served at once, as
    /// [`Source::Refreshing`](crate::Source::Refreshing), while one
    /// background reload per key replaces it. No caller waits for a
    /// recompute once a value exists, as long as reloads succeed within
    /// `ttl - after`.
    ///
    /// - The reload runs on a task of its own (it needs a Tokio runtime;
    ///   outside one, the value is served as `Cached` and expires as
    ///   without this setting), under the query's own timeout, and never
    ///   past the old value's TTL: a hung reload never holds a value
    ///   beyond its TTL, and callers that come after that load again.
    /// - A reload that fails keeps the old value until its TTL (then
    ///   stale-if-error applies as usual); the next reload starts no
    ///   sooner than a second later.
    /// - A value is never served past its TTL, however slow its reloads.
    /// - One reload per key at a time, shared with any caller that finds
    ///   the value expired while it runs.
    ///
    /// The cost: the query runs outside any request, so it lives in an
    /// `Arc` (which [`Cached`] requires anyway) and takes a connection from
    /// the pool on its own, without a fan-out's limiter or deadline. With
    /// [`SharedCached`], a reload takes the value in Redis only if another
    /// instance reloaded it (it is younger than `after`); otherwise it
    /// recomputes under the key's lock, or, when another instance holds
    /// the lock, looks again a second later. XFetch's early recomputation
    /// does not apply to a value being refreshed this way.
    ///
    /// An `after` of `ttl` or more never refreshes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::cache::CachePolicy;
    ///
    /// // Fresh for 60 s; from 45 s on, served while a reload replaces it.
    /// let policy = CachePolicy::ttl(Duration::from_secs(60)).refresh_after(Duration::from_secs(45));
    /// # let _ = policy;
    /// ```
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.refresh_after = Some(after);
        self
    }

    /// After its `ttl`, keep a value for `window` more, to show (marked
    /// stale) when the query fails.
    ///
    /// # Examples
    ///
    /// See [`CachePolicy`].
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// How long a value is kept in all: `ttl` plus the stale-if-error
    /// window.
    ///
    /// # Examples
    ///
    /// See [`CachePolicy`].
    pub fn keep_for(&self) -> Duration {
        self.ttl.saturating_add(self.stale_if_error)
    }

    pub(crate) fn time_to_live(&self) -> Duration {
        self.ttl
    }

    /// The age from which a value is reloaded in the background, if that
    /// is before its TTL.
    pub(crate) fn refresh_point(&self) -> Option<Duration> {
        self.refresh_after.filter(|&after| after < self.ttl)
    }
}

/// A query served through a [`QueryCache`]: a [`DashboardQuery`] itself, in
/// the spirit of a tower layer, with the wrapped query's name, timeout and
/// fallback.
///
/// The value type must be `Clone` (callers share one computed value) and
/// `'static`, and so must the query: it is held in an `Arc` that the load
/// in flight shares.
///
/// # Shared loads
///
/// Callers of one (tenant, query, key) that find no fresh value share one
/// load, whatever it returns: its value, or its error, timeout or panic
/// ([`LoadError`]), reaches every one of them; only a value is stored. Any
/// waiting caller's polling drives it, so a caller that is not polled holds
/// up nobody. It runs under the deadline of the caller that started it
/// (plus 25 ms); a caller with time left when it times out loads again.
/// When every caller waiting on it is dropped, the load is dropped too (the
/// query is cancelled) and nothing is stored. The cache key is the tenant, the tenant's generation, the
/// query's [`name`](DashboardQuery::name) and an optional
/// [`key`](Self::key) for queries with parameters, so two queries must not
/// share a name and key.
///
/// # Examples
///
/// See the [module](self) docs.
#[derive(Debug)]
pub struct Cached<Q> {
    // Shared with the load in flight, which outlives any one caller.
    query: Arc<Q>,
    cache: QueryCache,
    policy: CachePolicy,
    key: Arc<str>,
}

impl<Q> Cached<Q> {
    /// Serves `query` through `cache` under `policy`.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn new(query: Q, cache: &QueryCache, policy: CachePolicy) -> Self {
        Self {
            query: Arc::new(query),
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
    /// # use fanout::cache::{CachePolicy, Cached, QueryCache};
    /// # let cache = QueryCache::new(100);
    /// let this_month = Cached::new("query", &cache, CachePolicy::ttl(Duration::from_secs(60))).key("2026-11");
    /// # let _ = this_month;
    /// ```
    pub fn key(mut self, key: impl AsRef<str>) -> Self {
        self.key = Arc::from(key.as_ref());
        self
    }

    /// The wrapped query.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn inner(&self) -> &Q {
        &self.query
    }
}

impl<Q> DashboardQuery for Cached<Q>
where
    Q: DashboardQuery + 'static,
    Q::Output: Clone + Sync + 'static,
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

    fn load(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Loaded<Q::Output>, LoadError>> + Send {
        self.cache.load(&self.query, &self.key, self.policy, ctx)
    }

    fn stale(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Option<(Q::Output, Duration)>> + Send {
        self.cache
            .stale(tenant, self.query.name(), &self.key, self.policy)
    }
}
