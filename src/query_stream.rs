//! A slice of one query type through the engine, its load futures unboxed:
//! a stream of each query's outcome as it settles.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::drive::{Drive, Job, Recover};
use crate::hooks::{self, Hooks};
use crate::resolve::{self, QueryEnd};
use crate::{BoxError, DashboardQuery, FanOut, Loaded, Outcome, QueryContext, TenantId};

/// A query of the slice as the engine's input. `L` is [`hooks::load`] for
/// `Q`: a function item, so that the load future's type, which cannot be
/// written, is still known.
struct SliceJob<'a, Q, L> {
    query: &'a Q,
    hooks: Hooks,
    tenant: TenantId,
    load: L,
}

impl<'a, Q, L, F> Job for SliceJob<'a, Q, L>
where
    Q: DashboardQuery,
    L: FnOnce(&'a Q, &Hooks, QueryContext) -> F,
    F: Future<Output = Result<Loaded<Q::Output>, BoxError>>,
{
    type Ok = Loaded<Q::Output>;
    type Err = BoxError;
    type Future = F;
    type Recover = SliceLookup<'a, Q>;

    const UNIFORM_TIMEOUT: bool = false;

    fn timeout(&self) -> Option<Duration> {
        self.hooks.timeout
    }

    fn name(&self) -> &'static str {
        self.hooks.name
    }

    fn start(self, deadline: Option<Instant>) -> (F, Self::Recover) {
        let ctx = QueryContext::new(self.tenant.clone(), deadline);
        let load = (self.load)(self.query, &self.hooks, ctx);
        let lookup = SliceLookup {
            query: self.query,
            tenant: self.tenant,
        };
        (load, lookup)
    }

    fn skip(self) -> Self::Recover {
        SliceLookup {
            query: self.query,
            tenant: self.tenant,
        }
    }
}

/// A slice query's stale lookup, not yet built.
struct SliceLookup<'a, Q> {
    query: &'a Q,
    tenant: TenantId,
}

impl<'a, Q: DashboardQuery> Recover for SliceLookup<'a, Q> {
    type Value = (Q::Output, Duration);
    type Future = BoxFuture<'a, Option<(Q::Output, Duration)>>;

    fn recover(self) -> Option<Self::Future> {
        // Boxed: it only exists after a failure, and its type cannot be
        // written.
        Some(Box::pin(hooks::lookup(self.query, self.tenant)))
    }
}

/// Runs `queries` as one fan-out for `tenant` and yields each one's index,
/// name and outcome as it settles; records the fan-out's duration when the
/// stream ends.
pub(crate) fn stream<'a, Q: DashboardQuery>(
    fan_out: &FanOut,
    tenant: &TenantId,
    queries: &'a [Q],
) -> impl Stream<Item = (usize, &'static str, Outcome<Q::Output>)>
+ QueueLength
+ Send
+ Unpin
+ use<'a, Q> {
    let owned = tenant.clone();
    let jobs = queries.iter().map(move |query| SliceJob {
        query,
        hooks: Hooks::of(query),
        tenant: owned.clone(),
        load: hooks::load::<Q>,
    });
    Outcomes {
        drive: Drive::new(fan_out, Some(tenant), jobs),
        queries,
        tenant: tenant.clone(),
        started: None,
        longest_wait: Duration::ZERO,
        done: false,
    }
}

/// The engine's stream, each ended query turned into its outcome.
struct Outcomes<'a, D, Q> {
    drive: D,
    queries: &'a [Q],
    tenant: TenantId,
    started: Option<Instant>,
    longest_wait: Duration,
    done: bool,
}

/// What a stream of outcomes can tell of its fan-out's place in a fair
/// limiter's line.
pub(crate) trait QueueLength {
    /// The queue's length when the fan-out joined its line, if it has one.
    fn queue_length(&self) -> Option<usize>;
}

impl<I: crate::drive::Inputs> QueueLength for Drive<I> {
    fn queue_length(&self) -> Option<usize> {
        Drive::queue_length(self)
    }
}

impl<D: QueueLength, Q> QueueLength for Outcomes<'_, D, Q> {
    fn queue_length(&self) -> Option<usize> {
        self.drive.queue_length()
    }
}

impl<D: Unpin, Q> Unpin for Outcomes<'_, D, Q> {}

impl<D, Q> Stream for Outcomes<'_, D, Q>
where
    D: Stream<Item = crate::drive::Ended<Loaded<Q::Output>, BoxError, (Q::Output, Duration)>>
        + QueueLength
        + Unpin,
    Q: DashboardQuery,
{
    type Item = (usize, &'static str, Outcome<Q::Output>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let started = *this.started.get_or_insert_with(Instant::now);
        let Some(ended) = std::task::ready!(this.drive.poll_next_unpin(cx)) else {
            this.done = true;
            let queue_length = this.drive.queue_length();
            resolve::fan_out_finished(started.elapsed(), this.longest_wait, queue_length);
            return Poll::Ready(None);
        };
        let query = this
            .queries
            .get(ended.index)
            .expect("fanout bug: the engine yielded an index past the slice");
        this.longest_wait = this.longest_wait.max(ended.waited);
        let end = QueryEnd {
            elapsed: ended.elapsed(),
            waited: ended.waited,
            settled: ended.settled,
            stale: ended.stale,
        };
        let outcome = resolve::outcome(query, ended.name, &this.tenant, end);
        Poll::Ready(Some((ended.index, ended.name, outcome)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.drive.size_hint()
    }
}
