//! Running a set of differently typed queries through one engine: each query
//! becomes a [`QueryJob`] whose value lands in a typed slot of its own.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::Instrument;

use crate::drive::{Drive, Job};
use crate::in_order::InOrder;
use crate::log;
use crate::{
    BoxError, DashboardQuery, Failure, FanOut, Outcome, QueryContext, Settled, Source, TenantId,
};

type Start<'a> = Box<
    dyn FnOnce(QueryContext) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>
        + Send
        + 'a,
>;

/// A query bound to the slot its value goes to, type-erased so that the
/// queries of a tuple can share one engine.
pub(crate) struct QueryJob<'a> {
    timeout: Option<Duration>,
    tenant: TenantId,
    start: Start<'a>,
}

impl<'a> QueryJob<'a> {
    pub(crate) fn new<Q: DashboardQuery>(
        query: &'a Q,
        slot: &'a mut Option<Q::Output>,
        tenant: &TenantId,
    ) -> Self {
        let name = query.name();
        Self {
            timeout: query.timeout(),
            tenant: tenant.clone(),
            start: Box::new(move |ctx: QueryContext| {
                let span = tracing::info_span!("query", tenant = %ctx.tenant(), query = name);
                Box::pin(
                    async move {
                        let value = query.run(ctx).await.map_err(|e| Box::new(e) as BoxError)?;
                        *slot = Some(value);
                        Ok(())
                    }
                    .instrument(span),
                )
            }),
        }
    }
}

impl<'a> Job for QueryJob<'a> {
    type Ok = ();
    type Err = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

    const UNIFORM_TIMEOUT: bool = false;

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn start(self, deadline: Option<Instant>) -> Self::Future {
        (self.start)(QueryContext::new(self.tenant, deadline))
    }
}

/// How one query of a set ended; its value, if any, is in its slot.
pub(crate) struct Report {
    settled: Settled<(), BoxError>,
    elapsed: Duration,
}

/// Runs the jobs as one fan-out for `tenant`, logging each query as it
/// settles; returns one report per job, in input order.
pub(crate) async fn run_queries<'a, I>(
    fan_out: &FanOut,
    tenant: &TenantId,
    names: &[&'static str],
    jobs: I,
) -> Vec<Report>
where
    I: IntoIterator<Item = QueryJob<'a>>,
{
    let span = tracing::info_span!("fan_out", tenant = %tenant, queries = names.len());
    async {
        let mut reports = InOrder::new(names.len());
        let mut drive = Drive::new(fan_out, jobs.into_iter());
        while let Some(finished) = drive.next().await {
            let (index, elapsed) = (finished.index, finished.elapsed());
            let settled = finished.settled;
            let name = names.get(index).copied().unwrap_or("unnamed");
            log::query_settled(tenant, name, &settled, elapsed);
            reports.place(index, Report { settled, elapsed });
        }
        reports.finish()
    }
    .instrument(span)
    .await
}

/// Turns a query's report and slot into its outcome, calling its fallback
/// when it failed.
pub(crate) fn into_outcome<Q: DashboardQuery>(
    query: &Q,
    slot: Option<Q::Output>,
    report: Report,
) -> Outcome<Q::Output> {
    let failure = match report.settled {
        Settled::Ok(()) => match slot {
            Some(value) => return Outcome::new(value, Source::Fresh, report.elapsed),
            // A job only returns `Ok` after filling its slot.
            None => Failure::Error("query returned no value".into()),
        },
        Settled::Err(error) => Failure::Error(error),
        Settled::TimedOut => Failure::TimedOut,
        Settled::DeadlineExceeded => Failure::DeadlineExceeded,
        Settled::Panicked(message) => Failure::Panicked(message),
        Settled::LimiterClosed => Failure::LimiterClosed,
    };
    Outcome::new(query.fallback(), Source::Fallback(failure), report.elapsed)
}

impl Report {
    /// Stands in for a report the engine did not give; never used while the
    /// engine settles every input exactly once.
    pub(crate) fn missing() -> Self {
        Self {
            settled: Settled::Err("fan-out lost this query's result".into()),
            elapsed: Duration::ZERO,
        }
    }
}
