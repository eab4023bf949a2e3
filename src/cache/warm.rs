//! [`warm`]: fill the cache for many tenants before they ask.

use std::num::NonZeroUsize;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::{FanOut, QuerySet, TenantId};

/// What [`warm`] did.
///
/// # Examples
///
/// See [`warm`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmSummary {
    /// Tenants whose every query produced a value to cache.
    pub warmed: usize,
    /// Tenants with at least one query that failed (and so was not cached).
    pub failed: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs the dashboard `queries(tenant)` builds for each of `tenants`, at
/// most `concurrency` tenants at a time, so that its [`Cached`](super::Cached)
/// queries hold fresh values: a job to run before business hours. Each
/// dashboard runs under `fan_out`'s own limits; progress is logged at INFO
/// every 100 tenants.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use fanout::cache::{warm, CachePolicy, Cached, QueryCache};
/// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
///
/// struct ChildCount;
/// impl DashboardQuery for ChildCount {
///     type Output = u32;
///     type Error = std::io::Error;
///     fn name(&self) -> &'static str { "child_count" }
///     async fn run(&self, ctx: QueryContext) -> Result<u32, std::io::Error> {
///         Ok(ctx.tenant().as_str().len() as u32)
///     }
///     fn fallback(&self) -> u32 { 0 }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let cache = QueryCache::new(1_000);
/// let children = Cached::new(ChildCount, &cache, CachePolicy::ttl(Duration::from_secs(3600)));
/// let tenants = ["t1", "t2", "t3"].map(TenantId::new).into_iter().collect::<Result<Vec<_>, _>>()?;
///
/// let fan_out = FanOut::new();
/// let summary = warm(&fan_out, &tenants, |_| (&children,), NonZeroUsize::new(2).unwrap()).await;
/// assert_eq!((summary.warmed, summary.failed), (3, 0));
///
/// let (count,) = fan_out.run(&tenants[1], (&children,)).await;
/// assert!(matches!(count.source, fanout::Source::Cached { .. }));
/// # Ok(()) }
/// ```
pub async fn warm<'a, Q, F>(
    fan_out: &FanOut,
    tenants: &'a [TenantId],
    queries: F,
    concurrency: NonZeroUsize,
) -> WarmSummary
where
    Q: QuerySet,
    F: Fn(&'a TenantId) -> Q,
{
    let started = Instant::now();
    let dashboards = tenants.iter().map(|tenant| {
        let queries = queries(tenant);
        async move {
            Ok::<_, std::convert::Infallible>(fan_out.run_with_report(tenant, queries).await.1)
        }
    });
    let (mut warmed, mut failed) = (0, 0);
    let mut done = FanOut::new().concurrency(concurrency).stream(dashboards);
    while let Some((_, settled)) = done.next().await {
        match settled.ok() {
            Some(report) if report.degraded() == 0 => warmed += 1,
            _ => failed += 1,
        }
        if (warmed + failed) % 100 == 0 {
            tracing::info!(
                done = warmed + failed,
                of = tenants.len(),
                warmed,
                failed,
                "warming the cache"
            );
        }
    }
    let summary = WarmSummary {
        warmed,
        failed,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        warmed,
        failed,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "cache warmed"
    );
    summary
}
