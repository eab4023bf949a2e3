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

use crate::Loaded;
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
        slot: &'a mut Option<Loaded<Q::Output>>,
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

/// Loads `query` in its own span, boxing its error.
fn run_query<Q: DashboardQuery>(
    query: &Q,
    ctx: QueryContext,
) -> impl Future<Output = Result<Loaded<Q::Output>, BoxError>> + Send + '_ {
    let span = tracing::info_span!("query", tenant = %ctx.tenant(), query = query.name());
    async move { query.load(ctx).await.map_err(|e| Box::new(e) as BoxError) }.instrument(span)
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

/// Records the whole fan-out's metrics.
pub(crate) fn fan_out_finished(_elapsed: Duration) {
    #[cfg(feature = "metrics")]
    crate::metrics::fan_out_finished(_elapsed);
}

/// Runs a tuple's `count` jobs as one fan-out; returns one settlement per
/// job, in input order.
pub(crate) async fn run_queries<'a, I>(fan_out: &FanOut, count: usize, jobs: I) -> Vec<Settlement>
where
    I: IntoIterator<Item = QueryJob<'a>>,
{
    let mut settlements = InOrder::new(count);
    let mut drive = Drive::new(fan_out, jobs.into_iter());
    while let Some(finished) = drive.next().await {
        let elapsed = finished.elapsed();
        let settlement = Settlement {
            settled: finished.settled,
            elapsed,
        };
        settlements.place(finished.index, settlement);
    }
    settlements.finish()
}

/// Turns a query's settlement and slot into its outcome.
pub(crate) async fn into_outcome<Q: DashboardQuery>(
    query: &Q,
    tenant: &TenantId,
    slot: Option<Loaded<Q::Output>>,
    settlement: Settlement,
) -> Outcome<Q::Output> {
    let settled = settlement.settled.map(|()| slot);
    finish(query, tenant, settled, settlement.elapsed).await
}

/// A settled query's outcome: its value, a cached one, its last good one
/// (stale-if-error) or its fallback; logged and recorded once, here, where
/// the source is decided.
async fn finish<Q: DashboardQuery>(
    query: &Q,
    tenant: &TenantId,
    settled: Settled<Option<Loaded<Q::Output>>, BoxError>,
    elapsed: Duration,
) -> Outcome<Q::Output> {
    let failure = match settled {
        Settled::Ok(Some(Loaded::Fresh(value))) => {
            return observed(query, tenant, value, Source::Fresh, elapsed);
        }
        Settled::Ok(Some(Loaded::Cached { value, age })) => {
            return observed(query, tenant, value, Source::Cached { age }, elapsed);
        }
        // A tuple's job only returns `Ok` after filling its slot.
        Settled::Ok(None) => Failure::Error("query returned no value".into()),
        Settled::Err(error) => Failure::Error(error),
        Settled::TimedOut => Failure::TimedOut,
        Settled::DeadlineExceeded => Failure::DeadlineExceeded,
        Settled::Panicked(message) => Failure::Panicked(message),
        Settled::LimiterClosed => Failure::LimiterClosed,
    };
    match query.stale(tenant).await {
        Some((value, age)) => observed(
            query,
            tenant,
            value,
            Source::Stale {
                age,
                cause: failure,
            },
            elapsed,
        ),
        None => observed(
            query,
            tenant,
            query.fallback(),
            Source::Fallback(failure),
            elapsed,
        ),
    }
}

fn observed<Q: DashboardQuery>(
    query: &Q,
    tenant: &TenantId,
    value: Q::Output,
    source: Source,
    elapsed: Duration,
) -> Outcome<Q::Output> {
    log::query_finished(tenant, query.name(), &source, elapsed);
    #[cfg(feature = "metrics")]
    crate::metrics::query_settled(query.name(), source.label(), elapsed);
    Outcome::new(value, source, elapsed)
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
        finishing: None,
        done: false,
    }
}

type Finishing<'a, T> = Pin<Box<dyn Future<Output = (usize, Outcome<T>)> + Send + 'a>>;

/// The engine's stream, observed: each settled query turned into its
/// outcome (which may look up a stale value), the fan-out's duration
/// recorded at the end.
struct Observed<'a, D, Q: DashboardQuery> {
    drive: D,
    queries: &'a [Q],
    tenant: TenantId,
    started: Option<Instant>,
    finishing: Option<Finishing<'a, Q::Output>>,
    done: bool,
}

impl<D: Unpin, Q: DashboardQuery> Unpin for Observed<'_, D, Q> {}

impl<'a, D, Q> Stream for Observed<'a, D, Q>
where
    D: Stream<Item = Finished<Loaded<Q::Output>, BoxError>> + Unpin,
    Q: DashboardQuery,
{
    type Item = (usize, Outcome<Q::Output>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(finishing) = this.finishing.as_mut() {
            let finished = std::task::ready!(finishing.as_mut().poll(cx));
            this.finishing = None;
            return Poll::Ready(Some(finished));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        let Some(finished) = std::task::ready!(this.drive.poll_next_unpin(cx)) else {
            this.done = true;
            fan_out_finished(started.elapsed());
            return Poll::Ready(None);
        };
        let (index, elapsed) = (finished.index, finished.elapsed());
        let Some(query) = this.queries.get(index) else {
            return Poll::Ready(None);
        };
        let tenant = this.tenant.clone();
        let mut finishing: Finishing<'a, Q::Output> = Box::pin(async move {
            (
                index,
                finish(query, &tenant, finished.settled.map(Some), elapsed).await,
            )
        });
        match finishing.as_mut().poll(cx) {
            Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
            Poll::Pending => {
                this.finishing = Some(finishing);
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.drive.size_hint();
        let finishing = usize::from(self.finishing.is_some());
        (low + finishing, high.map(|h| h + finishing))
    }
}
