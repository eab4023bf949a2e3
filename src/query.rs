//! [`DashboardQuery`] and [`QueryContext`]: one widget's query, scoped to a
//! tenant.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::TenantId;

/// One widget's query, always scoped to one tenant.
///
/// A dashboard is a set of these run together by [`FanOut::run`](crate::FanOut::run).
/// The query reads its tenant from the [`QueryContext`] it is given, never
/// from its own fields, so one query value serves every tenant and a
/// dashboard cannot mix tenants.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
///
/// /// This month's revenue in cents, from some store keyed by tenant.
/// struct TotalRevenue<'a> {
///     store: &'a std::collections::HashMap<String, i64>,
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("no revenue row for tenant {0}")]
/// struct NoRow(String);
///
/// impl DashboardQuery for TotalRevenue<'_> {
///     type Output = i64;
///     type Error = NoRow;
///
///     fn name(&self) -> &'static str {
///         "total_revenue"
///     }
///
///     async fn run(&self, ctx: QueryContext) -> Result<i64, NoRow> {
///         let tenant = ctx.tenant().as_str();
///         self.store.get(tenant).copied().ok_or_else(|| NoRow(tenant.to_owned()))
///     }
///
///     fn fallback(&self) -> i64 {
///         0
///     }
///
///     fn timeout(&self) -> Option<Duration> {
///         Some(Duration::from_secs(2))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let store = std::collections::HashMap::from([("creche-1".to_string(), 125_000)]);
/// let query = TotalRevenue { store: &store };
///
/// let (revenue,) = FanOut::new().run(&TenantId::new("creche-1")?, (&query,)).await;
/// assert_eq!(revenue.value, 125_000);
///
/// let (revenue,) = FanOut::new().run(&TenantId::new("creche-2")?, (&query,)).await;
/// assert!(revenue.is_degraded());
/// assert_eq!(revenue.value, 0);
/// # Ok(()) }
/// ```
pub trait DashboardQuery: Send + Sync {
    /// The widget's value.
    type Output: Send;
    /// What the query fails with; boxed into [`Failure::Error`](crate::Failure::Error).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The query's stable name, used in logs, metrics and cache keys.
    fn name(&self) -> &'static str;

    /// Runs the query for `ctx.tenant()`.
    ///
    /// The future is dropped when the query times out or the fan-out's
    /// deadline passes; [`QueryContext::deadline`] says when that will be,
    /// so work outside this process (a database statement) can be given
    /// the same limit.
    fn run(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// The value the widget shows when the query fails, times out or
    /// panics, and has no [stale](Self::stale) value.
    ///
    /// Keep it a constant: a fallback that panics leaves the widget with
    /// no value at all (see `# Panics` on [`FanOut::run`](crate::FanOut::run)).
    fn fallback(&self) -> Self::Output;

    /// This query's own timeout, counted from when it starts; `None` (the
    /// default) uses the [`FanOut`](crate::FanOut)'s.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Gets the query's value, saying whether it was computed now or
    /// served from a cache: the hook a cache layer overrides. The default
    /// runs [`run`](Self::run), so its value is always
    /// [`Loaded::Fresh`]. The fan-out calls this, not `run`.
    ///
    /// # Examples
    ///
    /// A query that answers from a pre-computed value while it is recent:
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{DashboardQuery, FanOut, Loaded, QueryContext, Source, TenantId};
    ///
    /// struct Precomputed(i64, Duration);
    ///
    /// impl DashboardQuery for Precomputed {
    ///     type Output = i64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { "total_revenue" }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> { Ok(self.0) }
    ///     fn fallback(&self) -> i64 { 0 }
    ///     async fn load(&self, _ctx: QueryContext) -> Result<Loaded<i64>, std::io::Error> {
    ///         Ok(Loaded::Cached { value: self.0, age: self.1 })
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let query = Precomputed(7, Duration::from_secs(3));
    /// let (revenue,) = FanOut::new().run(&TenantId::new("t1")?, (query,)).await;
    /// assert!(matches!(revenue.source, Source::Cached { age } if age == Duration::from_secs(3)));
    /// # Ok(()) }
    /// ```
    fn load(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Loaded<Self::Output>, Self::Error>> + Send {
        async move { self.run(ctx).await.map(Loaded::Fresh) }
    }

    /// A last good value and its age, shown in place of the
    /// [`fallback`](Self::fallback) when the query fails, times out or
    /// panics (stale-if-error): the other hook a cache layer overrides. The
    /// default has none.
    ///
    /// The fan-out calls it inside its own timers: the lookup shares the
    /// query's timeout and the fan-out's deadline, runs beside the other
    /// queries and lookups, and is polled at least once (so a lookup that
    /// is ready at once is used even at the deadline). One that has not
    /// answered by then, or that panics, counts as "no stale value".
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
    ///
    /// struct Down;
    ///
    /// impl DashboardQuery for Down {
    ///     type Output = i64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { "outstanding" }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
    ///         Err(std::io::Error::other("database down"))
    ///     }
    ///     fn fallback(&self) -> i64 { 0 }
    ///     async fn stale(&self, _tenant: &TenantId) -> Option<(i64, Duration)> {
    ///         Some((41, Duration::from_secs(90)))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let (outstanding,) = FanOut::new().run(&TenantId::new("t1")?, (Down,)).await;
    /// assert_eq!(outstanding.value, 41);
    /// assert!(matches!(outstanding.source, Source::Stale { .. }));
    /// assert_eq!(outstanding.source.to_string(), "stale (90.0 s old; error: database down)");
    /// # Ok(()) }
    /// ```
    fn stale(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Option<(Self::Output, Duration)>> + Send {
        let _ = tenant;
        std::future::ready(None)
    }
}

/// A query's value as [`DashboardQuery::load`] got it.
///
/// # Examples
///
/// See [`DashboardQuery::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loaded<T> {
    /// Computed by this call.
    Fresh(T),
    /// Served from a cache, computed `age` ago.
    Cached {
        /// The value.
        value: T,
        /// How long ago it was computed.
        age: Duration,
    },
    /// Served from a cache, computed `age` ago: past the policy's refresh
    /// point, so a reload is replacing it in the background
    /// ([`CachePolicy::refresh_after`](crate::cache::CachePolicy::refresh_after)).
    Refreshing {
        /// The value.
        value: T,
        /// How long ago it was computed.
        age: Duration,
    },
}

impl<T> Loaded<T> {
    /// The value, wherever it came from.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::Loaded;
    /// assert_eq!(Loaded::Fresh(3).into_value(), 3);
    /// assert_eq!(Loaded::Refreshing { value: 4, age: Duration::from_secs(20) }.into_value(), 4);
    /// ```
    pub fn into_value(self) -> T {
        match self {
            Self::Fresh(value) | Self::Cached { value, .. } | Self::Refreshing { value, .. } => {
                value
            }
        }
    }

    /// The value converted by `f`, from the same source.
    #[cfg(feature = "serde")]
    pub(crate) fn try_map<U, E>(self, f: impl FnOnce(T) -> Result<U, E>) -> Result<Loaded<U>, E> {
        Ok(match self {
            Self::Fresh(value) => Loaded::Fresh(f(value)?),
            Self::Cached { value, age } => Loaded::Cached {
                value: f(value)?,
                age,
            },
            Self::Refreshing { value, age } => Loaded::Refreshing {
                value: f(value)?,
                age,
            },
        })
    }
}

/// A reference to a query is a query, so one set of query values can serve
/// many dashboards.
impl<Q: DashboardQuery> DashboardQuery for &Q {
    type Output = Q::Output;
    type Error = Q::Error;

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn run(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send {
        (**self).run(ctx)
    }

    fn fallback(&self) -> Self::Output {
        (**self).fallback()
    }

    fn timeout(&self) -> Option<Duration> {
        (**self).timeout()
    }

    fn load(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Loaded<Self::Output>, Self::Error>> + Send {
        (**self).load(ctx)
    }

    fn stale(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Option<(Self::Output, Duration)>> + Send {
        (**self).stale(tenant)
    }
}

/// What a running query knows about its call: the tenant, and when it will
/// be cut off.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
///
/// struct Remaining;
///
/// impl DashboardQuery for Remaining {
///     type Output = Option<Duration>;
///     type Error = std::convert::Infallible;
///     fn name(&self) -> &'static str { "remaining" }
///     async fn run(&self, ctx: QueryContext) -> Result<Option<Duration>, Self::Error> {
///         assert_eq!(ctx.tenant().as_str(), "t1");
///         Ok(ctx.remaining())
///     }
///     fn fallback(&self) -> Option<Duration> { None }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let fan_out = FanOut::new()
///     .timeout(Duration::from_secs(2))
///     .deadline(Duration::from_secs(3));
/// let (remaining,) = fan_out.run(&TenantId::new("t1")?, (Remaining,)).await;
/// // The earlier of the query's timeout and the fan-out's deadline.
/// assert_eq!(remaining.value, Some(Duration::from_secs(2)));
///
/// let (remaining,) = FanOut::new().run(&TenantId::new("t1")?, (Remaining,)).await;
/// assert_eq!(remaining.value, None); // no limit at all
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct QueryContext {
    tenant: TenantId,
    deadline: Option<Instant>,
}

impl QueryContext {
    /// A context for running a query by hand, outside a fan-out (in a
    /// test, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::{QueryContext, TenantId};
    ///
    /// let ctx = QueryContext::new(TenantId::new("t1")?, None);
    /// assert_eq!(ctx.tenant().as_str(), "t1");
    /// assert_eq!(ctx.deadline(), None);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn new(tenant: TenantId, deadline: Option<Instant>) -> Self {
        Self { tenant, deadline }
    }

    /// The tenant the query must be scoped to.
    ///
    /// # Examples
    ///
    /// See [`QueryContext`].
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// When the query will be dropped: the earlier of its own timeout and
    /// the fan-out's deadline; `None` when neither is set.
    ///
    /// # Examples
    ///
    /// See [`QueryContext`].
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until [`deadline`](Self::deadline), zero once it has
    /// passed; `None` when there is no deadline.
    ///
    /// # Examples
    ///
    /// See [`QueryContext`].
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }
}
