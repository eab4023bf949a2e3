//! [`Queue`]: the [`Inputs`] of a fan-out over an iterator of inputs of one
//! type (`settle`, `stream`, a `Vec` or slice of queries): the ones not
//! started wait in the iterator, the running ones in a `FuturesUnordered`,
//! which polls only those that were woken.

use std::future::Future;
use std::iter::{Enumerate, Peekable};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::drive::{Ended, Inputs, Job, Recover, Stop, earliest, expiry};
use crate::limiter::Permit;
use crate::running::{Running, panic_message};

type RunningOf<J> =
    Running<<J as Job>::Future, <J as Job>::Ok, <J as Job>::Err, <J as Job>::Recover>;

pub(crate) type EndedOf<J> =
    Ended<<J as Job>::Ok, <J as Job>::Err, <<J as Job>::Recover as Recover>::Value>;

/// See the module docs.
pub(crate) struct Queue<It: Iterator, J: Job> {
    pending: Contained<Peekable<Enumerate<It>>>,
    /// How many inputs were taken from the iterator: the number of results
    /// this fan-out yields, whatever the iterator's size hint said.
    seen: usize,
    in_flight: FuturesUnordered<RunningOf<J>>,
}

impl<It, J> Queue<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    pub(crate) fn new(jobs: It) -> Self {
        Self {
            pending: Contained(Some(jobs.enumerate().peekable())),
            seen: 0,
            in_flight: FuturesUnordered::new(),
        }
    }

    fn next_job(&mut self) -> Option<(usize, J)> {
        let next = self.pending.next()?;
        self.seen += 1;
        Some(next)
    }
}

impl<It, J> Inputs for Queue<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    type Ended = EndedOf<J>;

    fn has_pending(&mut self) -> bool {
        self.pending.peek().is_some()
    }

    fn pending_hint(&self) -> (usize, Option<usize>) {
        self.pending.size_hint()
    }

    fn running(&self) -> usize {
        self.in_flight.len()
    }

    fn taken(&self) -> usize {
        self.seen
    }

    fn start_next(
        &mut self,
        now: Instant,
        per_item: Option<Duration>,
        deadline_at: Option<Instant>,
        permit: Option<Permit>,
    ) -> bool {
        let Some((index, job)) = self.next_job() else {
            return false;
        };
        let (expiry, own_timer) = expiry(now, job.timeout(), per_item, deadline_at);
        let name = job.name();
        let (input, recover) = job.start(earliest(expiry, deadline_at));
        self.in_flight.push(Running::new(
            input, recover, index, name, now, own_timer, permit,
        ));
        true
    }

    fn skip_next(&mut self, stop: Stop, at: Instant, cx: &mut Context<'_>) -> Option<EndedOf<J>> {
        let (index, job) = self.next_job()?;
        Some(not_started(index, job, stop, at, cx))
    }

    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Option<EndedOf<J>>> {
        self.in_flight.poll_next_unpin(cx)
    }

    fn expire_running(
        &mut self,
        stop: Stop,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Vec<EndedOf<J>> {
        let mut running: Vec<EndedOf<J>> = Pin::new(&mut self.in_flight)
            .iter_pin_mut()
            .map(|input| input.expire(stop.settled(), now, cx))
            .collect();
        running.sort_unstable_by_key(|ended| ended.index);
        // Each input and lookup is dropped already; these are empty shells.
        self.in_flight.clear();
        running
    }
}

/// An input that never started: it settles as `stop` at `at`, with one
/// poll of its stale lookup.
fn not_started<J: Job>(
    index: usize,
    job: J,
    stop: Stop,
    at: Instant,
    cx: &mut Context<'_>,
) -> EndedOf<J> {
    let name = job.name();
    // `skip` drops what never ran (a plain future): its `Drop` may panic.
    let (settled, stale) = match catch_unwind(AssertUnwindSafe(|| job.skip())) {
        Ok(recover) => (
            stop.settled(),
            recover.recover().and_then(|lookup| poll_once(lookup, cx)),
        ),
        Err(payload) => (crate::Settled::Panicked(panic_message(&*payload)), None),
    };
    Ended {
        index,
        name,
        settled,
        stale,
        started_at: at,
        ended_at: at,
        waited: Duration::ZERO,
    }
}

/// One poll of a stale lookup for an input that never started, its panics
/// (in `poll` and in `Drop`) counted as "no stale value".
pub(crate) fn poll_once<F: Future<Output = Option<V>>, V>(
    lookup: F,
    cx: &mut Context<'_>,
) -> Option<V> {
    let mut lookup = std::pin::pin!(Some(lookup));
    let found = catch_unwind(AssertUnwindSafe(|| {
        lookup.as_mut().as_pin_mut().map(|lookup| lookup.poll(cx))
    }));
    let dropped = catch_unwind(AssertUnwindSafe(|| lookup.set(None)));
    match (found, dropped) {
        (Ok(Some(Poll::Ready(found))), Ok(())) => found,
        (Err(payload), _) | (_, Err(payload)) => {
            tracing::error!(error = %panic_message(&*payload), "stale lookup panicked");
            None
        }
        _ => None,
    }
}

/// The inputs not yet taken, dropped inside `catch_unwind` when a fan-out
/// is dropped before it took them all: an iterator of ready-made futures
/// (an array, a `Vec`) drops user futures, whose `Drop` may panic. (Two
/// such panics in one drop abort the process, as in any Rust collection:
/// a second panic while unwinding cannot be caught.)
struct Contained<T>(Option<T>);

impl<T> std::ops::Deref for Contained<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0
            .as_ref()
            .expect("fanout bug: pending inputs used after drop")
    }
}

impl<T> std::ops::DerefMut for Contained<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
            .as_mut()
            .expect("fanout bug: pending inputs used after drop")
    }
}

impl<T> Drop for Contained<T> {
    fn drop(&mut self) {
        let pending = &mut self.0;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(pending.take()))) {
            tracing::error!(error = %panic_message(&*payload), "input panicked while being dropped");
        }
    }
}
