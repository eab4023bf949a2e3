//! [`Drive`]: the engine under every fan-out. A stream of inputs as they
//! end, in completion order, honouring the timeout, deadline, concurrency
//! limit and shared limiter of a [`FanOut`]. A failed input's stale lookup
//! runs here too, beside the inputs still in flight and under the same
//! timers, so nothing a fan-out awaits outlives its deadline.

use std::future::Future;
use std::iter::{Enumerate, Peekable};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::fair::{Refused, ShedReason, Ticket};
use crate::limiter::{FifoWait, Limiter, Permit};
use crate::running::{Running, panic_message};
use crate::{FanOut, Settled, TenantId};

/// One input of a fan-out, not yet started.
pub(crate) trait Job {
    type Ok;
    type Err;
    type Future: Future<Output = Result<Self::Ok, Self::Err>>;
    /// What the input falls back on when it fails: its stale lookup.
    type Recover: Recover;

    /// True when no job of this type overrides the fan-out's timeout. Such a
    /// fan-out, when every input starts at once, needs one timer in all.
    const UNIFORM_TIMEOUT: bool;

    /// This job's own timeout; `None` means the fan-out's.
    fn timeout(&self) -> Option<Duration>;

    /// The query's name, carried to its [`Ended`]; empty for plain futures.
    fn name(&self) -> &'static str {
        ""
    }

    /// Starts the job. `deadline` is the earlier of its own timeout and the
    /// fan-out's deadline, for jobs that pass it on (to a database, say).
    ///
    /// Runs no user code: whatever the input does happens when it is
    /// polled, where panics are caught.
    fn start(self, deadline: Option<Instant>) -> (Self::Future, Self::Recover);

    /// The job will never start (the deadline passed, the limiter closed):
    /// what it falls back on.
    fn skip(self) -> Self::Recover;
}

/// A failed input's way to a stale value.
pub(crate) trait Recover {
    type Value;
    type Future: Future<Output = Option<Self::Value>>;

    /// The lookup, not yet polled, or `None` when there is nothing to look
    /// up. Runs no user code, like [`Job::start`].
    fn recover(self) -> Option<Self::Future>;
}

/// No stale value, ever: the plain futures of `settle` and `stream`.
pub(crate) struct NoRecovery;

impl Recover for NoRecovery {
    type Value = std::convert::Infallible;
    type Future = std::future::Pending<Option<std::convert::Infallible>>;

    fn recover(self) -> Option<Self::Future> {
        None
    }
}

/// A future that is already built: starting it is polling it.
pub(crate) struct Eager<F>(pub(crate) F);

impl<F, T, E> Job for Eager<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Ok = T;
    type Err = E;
    type Future = F;
    type Recover = NoRecovery;

    const UNIFORM_TIMEOUT: bool = true;

    fn timeout(&self) -> Option<Duration> {
        None
    }

    fn start(self, _deadline: Option<Instant>) -> (F, NoRecovery) {
        (self.0, NoRecovery)
    }

    fn skip(self) -> NoRecovery {
        NoRecovery
    }
}

/// How one input ended: its index, how its future ended, the stale value
/// its lookup found when that was a failure, when it started and ended
/// (the same instant for an input that never started), and how long it
/// waited to start (for a limit or a limiter's permit) or to be given up.
pub(crate) struct Ended<T, E, V> {
    pub(crate) index: usize,
    pub(crate) name: &'static str,
    pub(crate) settled: Settled<T, E>,
    pub(crate) stale: Option<V>,
    pub(crate) started_at: Instant,
    pub(crate) ended_at: Instant,
    pub(crate) waited: Duration,
}

impl<T, E, V> Ended<T, E, V> {
    /// How long the input ran; computed on demand, as most callers log it
    /// only when logging is on.
    pub(crate) fn elapsed(&self) -> Duration {
        self.ended_at.saturating_duration_since(self.started_at)
    }
}

type RunningOf<J> =
    Running<<J as Job>::Future, <J as Job>::Ok, <J as Job>::Err, <J as Job>::Recover>;

type EndedOf<J> = Ended<<J as Job>::Ok, <J as Job>::Err, <<J as Job>::Recover as Recover>::Value>;

/// The engine: see the module docs.
pub(crate) struct Drive<It: Iterator, J: Job> {
    pending: Contained<Peekable<Enumerate<It>>>,
    /// How many inputs were taken from the iterator: the number of results
    /// this fan-out yields, whatever the iterator's size hint said.
    seen: usize,
    in_flight: FuturesUnordered<RunningOf<J>>,
    limit: usize,
    limiter: Option<Limiter>,
    /// The fan-out's wait on a FIFO limiter.
    fifo: FifoWait,
    /// The fan-out's place in a fair limiter's line, and its tenant there.
    ticket: Option<Ticket>,
    tenant: Option<TenantId>,
    /// The fair limiter's queue length when this fan-out joined its line.
    queue_length: Option<usize>,
    limiter_closed: bool,
    /// Set when the fair limiter sent this fan-out away: what has not
    /// started never will.
    shed: Option<ShedReason>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    clock: Option<Clock>,
    expired: Option<Expired<EndedOf<J>>>,
}

/// Set on the first poll, when the fan-out starts.
struct Clock {
    started: Instant,
    /// Whether the first poll is over: the inputs it starts are the only
    /// ones that may start at the deadline (a zero deadline).
    first_poll_done: bool,
    deadline_at: Option<Instant>,
    /// Per-item timeout for each input, unless it is folded into `shared`.
    per_item: Option<Duration>,
    /// When everything still running stops.
    shared_at: Option<Instant>,
    /// The timer for `shared_at`, armed the first time an input is pending:
    /// a fan-out of ready inputs never touches the timer wheel.
    shared: Option<Pin<Box<Sleep>>>,
    /// Whether `shared` firing means the inputs' own timeout (all started
    /// together) rather than the fan-out's deadline.
    shared_is_timeout: bool,
}

/// Once the shared timer fires: the inputs that were running, then the ones
/// never started, are reported one by one.
struct Expired<E> {
    running: std::vec::IntoIter<E>,
    at: Instant,
}

// Nothing in a `Drive` is pinned in place: started inputs live in
// `FuturesUnordered`'s own allocations and pending ones are only moved.
impl<It: Iterator, J: Job> Unpin for Drive<It, J> {}

impl<It, J> Drive<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    /// The engine of one fan-out, for `tenant` when it has one (a fair
    /// limiter puts each tenant in a line of its own).
    pub(crate) fn new(plan: &FanOut, tenant: Option<&TenantId>, jobs: It) -> Self {
        let limiter = plan.shared_limiter().cloned();
        let tenant = match limiter {
            Some(Limiter::Fair(_)) => tenant.cloned(),
            _ => None,
        };
        Self {
            pending: Contained(Some(jobs.enumerate().peekable())),
            seen: 0,
            in_flight: FuturesUnordered::new(),
            limit: plan.concurrency_limit().map_or(usize::MAX, |n| n.get()),
            limiter,
            fifo: FifoWait::default(),
            ticket: None,
            tenant,
            queue_length: None,
            limiter_closed: false,
            shed: None,
            timeout: plan.per_item_timeout(),
            deadline: plan.whole_deadline(),
            clock: None,
            expired: None,
        }
    }

    /// How many inputs the fan-out has taken so far; once the stream has
    /// ended, how many it had in all.
    pub(crate) fn seen(&self) -> usize {
        self.seen
    }

    /// The fair limiter's queue length (permits wanted by other fan-outs)
    /// when this fan-out joined its line; `None` without a fair limiter.
    pub(crate) fn queue_length(&self) -> Option<usize> {
        self.queue_length
    }

    fn next_job(&mut self) -> Option<(usize, J)> {
        let next = self.pending.next()?;
        self.seen += 1;
        Some(next)
    }

    fn start_clock(&self, now: Instant) -> Clock {
        let deadline_at = self.deadline.and_then(|d| now.checked_add(d));
        let all_start_now = self.limit == usize::MAX && self.limiter.is_none();
        if J::UNIFORM_TIMEOUT && all_start_now {
            // Every input starts now with the same timeout, so they all
            // expire together: one timer serves the whole fan-out.
            let timeout_at = self.timeout.and_then(|t| now.checked_add(t));
            let shared_at = earliest(timeout_at, deadline_at);
            return Clock {
                started: now,
                first_poll_done: false,
                deadline_at,
                per_item: None,
                shared_at,
                shared: None,
                shared_is_timeout: timeout_at.is_some() && timeout_at == shared_at,
            };
        }
        Clock {
            started: now,
            first_poll_done: false,
            deadline_at,
            per_item: self.timeout,
            shared_at: deadline_at,
            shared: None,
            shared_is_timeout: false,
        }
    }

    /// Starts inputs while the limits allow; returns an input that settled
    /// without starting (the limiter was closed), if any.
    ///
    /// Nothing starts at or after the deadline, except on the fan-out's
    /// first poll: the inputs it starts get their first poll, so that a
    /// ready input succeeds even under `deadline(Duration::ZERO)`, as under
    /// a zero timeout. (A flag, not a clock comparison: on a paused or
    /// coarse clock later polls can read the same instant.) A slot that
    /// frees exactly at the deadline starts nothing: that input would be
    /// cut off the moment it was sent.
    fn start_inputs(&mut self, now: Instant, cx: &mut Context<'_>) -> Option<EndedOf<J>> {
        let (deadline_at, per_item) = match &self.clock {
            Some(clock) if !clock.first_poll_done || clock.deadline_at.is_none_or(|d| now < d) => {
                (clock.deadline_at, clock.per_item)
            }
            _ => return None,
        };
        while self.in_flight.len() < self.limit && self.pending.peek().is_some() {
            let permit = match &self.limiter {
                None => None,
                Some(_) if self.limiter_closed => {
                    let (index, job) = self.next_job()?;
                    return Some(not_started(index, job, Settled::LimiterClosed, now, cx));
                }
                Some(_) if self.shed.is_some() => {
                    let (index, job) = self.next_job()?;
                    return Some(not_started(index, job, Settled::Shed, now, cx));
                }
                Some(Limiter::Fifo(semaphore)) => match self.fifo.poll_permit(semaphore, cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(permit)) => Some(Permit::Fifo(permit)),
                    Poll::Ready(Err(_closed)) => {
                        self.limiter_closed = true;
                        continue;
                    }
                },
                Some(Limiter::Fair(fair)) => {
                    // All it could start now: its free slots, or what is
                    // left of its inputs if fewer.
                    let wanted = (self.limit - self.in_flight.len())
                        .min(self.pending.size_hint().0)
                        .max(1);
                    let ticket = self
                        .ticket
                        .get_or_insert_with(|| fair.ticket(self.tenant.as_ref()));
                    let polled = ticket.poll_permit(cx, now, wanted, deadline_at);
                    self.queue_length = self.queue_length.or(ticket.queue_length());
                    match polled {
                        Poll::Pending => break,
                        Poll::Ready(Ok(permit)) => Some(Permit::Fair(permit)),
                        Poll::Ready(Err(refused)) => {
                            self.ticket = None;
                            match refused {
                                Refused::Closed => self.limiter_closed = true,
                                Refused::Shed(reason) => {
                                    tracing::debug!(
                                        reason = reason.label(),
                                        queue_length = self.queue_length,
                                        waited_ms = self.waited_ms(now),
                                        left = self.pending.size_hint().0,
                                        "queries shed"
                                    );
                                    self.shed = Some(reason);
                                }
                            }
                            continue;
                        }
                    }
                }
            };
            let Some((index, job)) = self.next_job() else {
                break;
            };
            let expiry = job.timeout().or(per_item).and_then(|t| now.checked_add(t));
            // Its own timer unless the shared one fires first. At a tie the
            // own timer is kept, so the input is `TimedOut` whatever the
            // limits, as when every input shares one timer.
            let own_timer = expiry.filter(|&at| deadline_at.is_none_or(|d| at <= d));
            let name = job.name();
            let (input, recover) = job.start(earliest(expiry, deadline_at));
            self.in_flight.push(Running::new(
                input, recover, index, name, now, own_timer, permit,
            ));
        }
        if self.pending.peek().is_none() {
            // Nothing left to start: leave the line, handing back what
            // was granted and not taken.
            self.ticket = None;
        }
        None
    }

    /// How long since the fan-out started, in milliseconds, for logs.
    fn waited_ms(&self, now: Instant) -> f64 {
        self.clock.as_ref().map_or(0.0, |clock| {
            now.saturating_duration_since(clock.started).as_secs_f64() * 1e3
        })
    }

    /// Notes how long `ended` waited before it started (or was given up).
    fn stamped(&self, mut ended: EndedOf<J>) -> EndedOf<J> {
        if let Some(clock) = &self.clock {
            ended.waited = ended.started_at.saturating_duration_since(clock.started);
        }
        ended
    }

    /// The shared timer fired: every input still running stops now, after
    /// one last poll of it and then of its stale lookup.
    fn expire(&mut self, timed_out: bool, now: Instant, cx: &mut Context<'_>) {
        let cause = || {
            if timed_out {
                Settled::TimedOut
            } else {
                Settled::DeadlineExceeded
            }
        };
        let mut running: Vec<EndedOf<J>> = Pin::new(&mut self.in_flight)
            .iter_pin_mut()
            .map(|input| input.expire(cause(), now, cx))
            .collect();
        running.sort_unstable_by_key(|ended| ended.index);
        // Each input and lookup is dropped already; these are empty shells.
        self.in_flight.clear();
        self.fifo.cancel();
        self.ticket = None;
        self.expired = Some(Expired {
            running: running.into_iter(),
            at: now,
        });
    }

    fn next_expired(&mut self, cx: &mut Context<'_>) -> Option<EndedOf<J>> {
        let expired = self.expired.as_mut()?;
        if let Some(ended) = expired.running.next() {
            return Some(ended);
        }
        let at = expired.at;
        let (index, job) = self.next_job()?;
        Some(not_started(index, job, Settled::DeadlineExceeded, at, cx))
    }
}

impl<It, J> Stream for Drive<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    type Item = EndedOf<J>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_ended(cx)
            .map(|ended| ended.map(|ended| this.stamped(ended)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.pending.size_hint();
        let running = self.in_flight.len() + self.expired.as_ref().map_or(0, |e| e.running.len());
        (
            low.saturating_add(running),
            high.and_then(|h| h.checked_add(running)),
        )
    }
}

impl<It, J> Drive<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<Option<EndedOf<J>>> {
        let this = self;
        if this.expired.is_some() {
            return Poll::Ready(this.next_expired(cx));
        }
        let now = Instant::now();
        if this.clock.is_none() {
            this.clock = Some(this.start_clock(now));
        }
        let started = this.start_inputs(now, cx);
        // The first poll is over once it has started what it could; one
        // that returned early (a closed limiter) goes on at the next poll.
        if started.is_none()
            && let Some(clock) = this.clock.as_mut()
        {
            clock.first_poll_done = true;
        }
        if let Some(ended) = started {
            return Poll::Ready(Some(ended));
        }
        // Inputs are polled before the shared timer, so an input that is
        // ready is never reported as expired.
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some(ended)) => return Poll::Ready(Some(ended)),
            Poll::Ready(None) if this.pending.peek().is_none() => return Poll::Ready(None),
            // Empty but inputs remain: waiting for a limiter permit, or
            // past the shared expiry with inputs never started.
            Poll::Ready(None) | Poll::Pending => {}
        }
        if let Some(clock) = this.clock.as_mut()
            && let Some(at) = clock.shared_at
            // The clock is checked as well as the timer: a timer armed at
            // the expiry instant may not be ready on this very poll.
            && (now >= at
                || clock
                    .shared
                    .get_or_insert_with(|| Box::pin(sleep_until(at)))
                    .as_mut()
                    .poll(cx)
                    .is_ready())
        {
            let timed_out = clock.shared_is_timeout;
            this.expire(timed_out, now, cx);
            return Poll::Ready(this.next_expired(cx));
        }
        Poll::Pending
    }
}

/// An input that never started: it settles as `settled` at `at`, with one
/// poll of its stale lookup.
fn not_started<J: Job>(
    index: usize,
    job: J,
    settled: Settled<J::Ok, J::Err>,
    at: Instant,
    cx: &mut Context<'_>,
) -> EndedOf<J> {
    let name = job.name();
    // `skip` drops what never ran (a plain future): its `Drop` may panic.
    let (settled, stale) = match catch_unwind(AssertUnwindSafe(|| job.skip())) {
        Ok(recover) => (
            settled,
            recover.recover().and_then(|lookup| poll_once(lookup, cx)),
        ),
        Err(payload) => (Settled::Panicked(panic_message(&*payload)), None),
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
fn poll_once<F: Future<Output = Option<V>>, V>(lookup: F, cx: &mut Context<'_>) -> Option<V> {
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

/// The earlier of two optional instants, `None` standing for "never".
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
