//! Running dashboard queries through the engine. A tuple's queries differ in
//! type, so each becomes a boxed [`QueryJob`] whose value lands in a typed
//! slot of its own; a slice's queries share one type and run unboxed, as a
//! stream in completion order.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::drive::{Drive, Finished, Job};
use crate::in_order::InOrder;
use crate::{
    BoxError, DashboardQuery, Failure, FanOut, Outcome, QueryContext, Settled, Source, TenantId,
    log,
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
        Self {
            timeout: query.timeout(),
            tenant: tenant.clone(),
            start: Box::new(move |ctx: QueryContext| {
                Box::pin(async move {
                    *slot = Some(run_query(query, ctx).await?);
                    Ok(())
                })
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

/// Runs `query` in its own span, boxing its error.
fn run_query<Q: DashboardQuery>(
    query: &Q,
    ctx: QueryContext,
) -> impl Future<Output = Result<Q::Output, BoxError>> + Send + '_ {
    let span = tracing::info_span!("query", tenant = %ctx.tenant(), query = query.name());
    async move { query.run(ctx).await.map_err(|e| Box::new(e) as BoxError) }.instrument(span)
}

/// How one query of a tuple ended; its value, if any, is in its slot.
pub(crate) struct Settlement {
    settled: Settled<(), BoxError>,
    elapsed: Duration,
}

impl Settlement {
    /// Stands in for a settlement the engine did not give; never used while
    /// the engine settles every input exactly once.
    pub(crate) fn missing() -> Self {
        Self {
            settled: Settled::Err("fan-out lost this query's result".into()),
            elapsed: Duration::ZERO,
        }
    }
}

/// Logs a settled query and records its metrics.
fn observe<T>(
    tenant: &TenantId,
    query: &'static str,
    settled: &Settled<T, BoxError>,
    elapsed: Duration,
) {
    log::query_settled(tenant, query, settled, elapsed);
    #[cfg(feature = "metrics")]
    crate::metrics::query_settled(query, log::query_outcome(settled), elapsed);
}

/// Records the whole fan-out's metrics.
pub(crate) fn fan_out_finished(_elapsed: Duration) {
    #[cfg(feature = "metrics")]
    crate::metrics::fan_out_finished(_elapsed);
}

/// Runs a tuple's jobs as one fan-out for `tenant`; returns one settlement
/// per job, in input order.
pub(crate) async fn run_queries<'a, I>(
    fan_out: &FanOut,
    tenant: &TenantId,
    names: &[&'static str],
    jobs: I,
) -> Vec<Settlement>
where
    I: IntoIterator<Item = QueryJob<'a>>,
{
    let span = tracing::info_span!("fan_out", tenant = %tenant, queries = names.len());
    async {
        let mut settlements = InOrder::new(names.len());
        let mut drive = Drive::new(fan_out, jobs.into_iter());
        while let Some(finished) = drive.next().await {
            let elapsed = finished.elapsed();
            let name = names.get(finished.index).copied().unwrap_or("unnamed");
            observe(tenant, name, &finished.settled, elapsed);
            settlements.place(
                finished.index,
                Settlement {
                    settled: finished.settled,
                    elapsed,
                },
            );
        }
        settlements.finish()
    }
    .instrument(span)
    .await
}

/// Turns a query's settlement and slot into its outcome, calling its
/// fallback when it failed.
pub(crate) fn into_outcome<Q: DashboardQuery>(
    query: &Q,
    slot: Option<Q::Output>,
    settlement: Settlement,
) -> Outcome<Q::Output> {
    let value = match (settlement.settled, slot) {
        (Settled::Ok(()), Some(value)) => Ok(value),
        // A job only returns `Ok` after filling its slot.
        (Settled::Ok(()), None) => Err(Settled::Err("query returned no value".into())),
        (other, _) => Err(other),
    };
    outcome(query, value, settlement.elapsed)
}

fn outcome<Q: DashboardQuery>(
    query: &Q,
    value: Result<Q::Output, Settled<(), BoxError>>,
    elapsed: Duration,
) -> Outcome<Q::Output> {
    let failure = match value {
        Ok(value) => return Outcome::new(value, Source::Fresh, elapsed),
        Err(Settled::Ok(())) => Failure::Error("query returned no value".into()),
        Err(Settled::Err(error)) => Failure::Error(error),
        Err(Settled::TimedOut) => Failure::TimedOut,
        Err(Settled::DeadlineExceeded) => Failure::DeadlineExceeded,
        Err(Settled::Panicked(message)) => Failure::Panicked(message),
        Err(Settled::LimiterClosed) => Failure::LimiterClosed,
    };
    Outcome::new(query.fallback(), Source::Fallback(failure), elapsed)
}

/// A query of one type, started when the engine starts it.
struct Lazy<S> {
    timeout: Option<Duration>,
    start: S,
}

impl<S, F, T> Job for Lazy<S>
where
    S: FnOnce(Option<Instant>) -> F,
    F: Future<Output = Result<T, BoxError>>,
{
    type Ok = T;
    type Err = BoxError;
    type Future = F;

    const UNIFORM_TIMEOUT: bool = false;

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn start(self, deadline: Option<Instant>) -> F {
        (self.start)(deadline)
    }
}

/// Runs `queries` as one fan-out for `tenant` and yields each one's outcome
/// as it settles.
pub(crate) fn stream_queries<'a, Q: DashboardQuery>(
    fan_out: &FanOut,
    tenant: &TenantId,
    queries: &'a [Q],
) -> impl Stream<Item = (usize, Outcome<Q::Output>)> + Send + Unpin + use<'a, Q> {
    let owned_tenant = tenant.clone();
    let jobs = queries.iter().map(move |query| {
        let tenant = owned_tenant.clone();
        Lazy {
            timeout: query.timeout(),
            start: move |deadline| run_query(query, QueryContext::new(tenant, deadline)),
        }
    });
    Observed {
        drive: Drive::new(fan_out, jobs),
        queries,
        tenant: tenant.clone(),
        started: None,
        done: false,
    }
}

/// The engine's stream, observed: each query logged and turned into its
/// outcome, the fan-out's duration recorded at the end.
struct Observed<'a, D, Q> {
    drive: D,
    queries: &'a [Q],
    tenant: TenantId,
    started: Option<Instant>,
    done: bool,
}

impl<D: Unpin, Q> Unpin for Observed<'_, D, Q> {}

impl<D, Q> Stream for Observed<'_, D, Q>
where
    D: Stream<Item = Finished<Q::Output, BoxError>> + Unpin,
    Q: DashboardQuery,
{
    type Item = (usize, Outcome<Q::Output>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let Some(finished) = std::task::ready!(self.drive.poll_next_unpin(cx)) else {
            self.done = true;
            fan_out_finished(started.elapsed());
            return Poll::Ready(None);
        };
        let (index, elapsed) = (finished.index, finished.elapsed());
        let Some(query) = self.queries.get(index) else {
            return Poll::Ready(None);
        };
        observe(&self.tenant, query.name(), &finished.settled, elapsed);
        let value = match finished.settled {
            Settled::Ok(value) => Ok(value),
            other => Err(other.map(drop)),
        };
        Poll::Ready(Some((index, outcome(query, value, elapsed))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.drive.size_hint()
    }
}
