//! [`Report`]: what one dashboard fan-out did, for logs, metrics and
//! performance pages.

use std::time::Duration;

use crate::{Failure, Outcome, TenantId};

/// A summary of one dashboard fan-out: how long it took, and each query's
/// outcome and latency, in input order.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
///
/// struct Sleepy(&'static str, u64);
///
/// impl DashboardQuery for Sleepy {
///     type Output = u64;
///     type Error = std::io::Error;
///     fn name(&self) -> &'static str { self.0 }
///     async fn run(&self, _ctx: QueryContext) -> Result<u64, std::io::Error> {
///         tokio::time::sleep(Duration::from_millis(self.1)).await;
///         Ok(self.1)
///     }
///     fn fallback(&self) -> u64 { 0 }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let fan_out = FanOut::new().timeout(Duration::from_millis(300));
/// let tenant = TenantId::new("t1")?;
/// let (_outcomes, report) = fan_out
///     .run_with_report(&tenant, (Sleepy("fast", 100), Sleepy("slow", 500)))
///     .await;
///
/// assert_eq!(report.elapsed, Duration::from_millis(300));
/// assert_eq!(report.count("fresh"), 1);
/// assert_eq!(report.count("timed_out"), 1);
/// assert_eq!(report.degraded(), 1);
/// assert_eq!(report.slowest().map(|q| q.name), Some("slow"));
/// assert_eq!(report.longest_wait(), Duration::ZERO); // no limiter
/// assert_eq!((report.shed(), report.queue_length), (0, None));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The tenant the dashboard was for.
    pub tenant: TenantId,
    /// The whole fan-out, from its start to its last query's end.
    pub elapsed: Duration,
    /// One entry per query, in input order.
    pub queries: Vec<QueryReport>,
    /// The [`FairLimiter`](crate::FairLimiter)'s queue length (permits
    /// wanted by other fan-outs, not granted yet) when this fan-out joined
    /// its line, which every fan-out under a fair limiter does on its first
    /// poll; `None` without a fair limiter (or with no query, or with a
    /// closed one).
    pub queue_length: Option<usize>,
}

/// One query's line in a [`Report`].
///
/// # Examples
///
/// See [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryReport {
    /// The query's [`name`](crate::DashboardQuery::name).
    pub name: &'static str,
    /// Where its value came from: the [`Source::label`](crate::Source::label)
    /// word (`fresh`, `error`, `timed_out`, ...).
    pub outcome: &'static str,
    /// How long it ran.
    pub elapsed: Duration,
    /// How long it waited to start (see [`Outcome::waited`](crate::Outcome::waited)).
    pub waited: Duration,
    /// Why it failed, when it did (shown stale or as its fallback): the
    /// [`Failure::label`](crate::Failure::label) word.
    pub cause: Option<&'static str>,
}

impl Report {
    pub(crate) fn new(
        tenant: &TenantId,
        elapsed: Duration,
        queries: Vec<QueryReport>,
        queue_length: Option<usize>,
    ) -> Self {
        Self {
            tenant: tenant.clone(),
            elapsed,
            queries,
            queue_length,
        }
    }

    /// The longest any query waited to start: for a limiter's permit, or
    /// a slot under the concurrency limit.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    pub fn longest_wait(&self) -> Duration {
        self.queries
            .iter()
            .map(|q| q.waited)
            .max()
            .unwrap_or_default()
    }

    /// How many queries a [`FairLimiter`](crate::FairLimiter) shed,
    /// whether they show their stale value or their fallback.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    pub fn shed(&self) -> usize {
        self.queries
            .iter()
            .filter(|q| q.cause == Some("shed"))
            .count()
    }

    /// How many queries had `outcome` (a [`Source::label`](crate::Source::label)
    /// word).
    ///
    /// # Examples
    ///
    /// See [`Report`].
    pub fn count(&self, outcome: &str) -> usize {
        self.queries.iter().filter(|q| q.outcome == outcome).count()
    }

    /// How many queries show a stand-in (a stale value or the fallback)
    /// because they failed.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    pub fn degraded(&self) -> usize {
        self.queries
            .iter()
            .filter(|q| !matches!(q.outcome, "fresh" | "cached" | "refreshing"))
            .count()
    }

    /// The query that ran longest, if there was any query.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    pub fn slowest(&self) -> Option<&QueryReport> {
        self.queries.iter().max_by_key(|q| q.elapsed)
    }
}

impl QueryReport {
    pub(crate) fn new<T>(name: &'static str, outcome: &Outcome<T>) -> Self {
        Self {
            name,
            outcome: outcome.source.label(),
            elapsed: outcome.elapsed,
            waited: outcome.waited,
            cause: outcome.failure().map(Failure::label),
        }
    }
}
