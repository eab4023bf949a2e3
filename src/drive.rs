//! [`Drive`]: the engine under every fan-out. A stream of inputs as they
//! end, in completion order, honouring the timeout, deadline, concurrency
//! limit and shared limiter of a [`FanOut`]. A failed input's stale lookup
//! runs here too, beside the inputs still in flight and under the same
//! timers, so nothing a fan-out awaits outlives its deadline.
//!
//! The engine decides when inputs start and stop; where they live is its
//! [`Inputs`]: a [`Queue`](crate::queue::Queue) of inputs of one type for
//! iterators and slices, or the typed members of a tuple
//! ([`query_tuple`](crate::query_tuple)), held in place without a box or a
//! task each.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::Stream;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::fair::{Refused, ShedReason, Ticket};
use crate::limiter::{FifoWait, Limiter, Permit};
use crate::queue::Queue;
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

/// What the engine yields for an input: it notes how long the input
/// waited to start.
pub(crate) trait Stamp {
    fn started_at(&self) -> Instant;
    fn set_waited(&mut self, waited: Duration);
}

impl<T, E, V> Stamp for Ended<T, E, V> {
    fn started_at(&self) -> Instant {
        self.started_at
    }

    fn set_waited(&mut self, waited: Duration) {
        self.waited = waited;
    }
}

/// Why the engine stopped an input, or gave it up without starting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    TimedOut,
    DeadlineExceeded,
    LimiterClosed,
    Shed,
}

impl Stop {
    pub(crate) fn settled<T, E>(self) -> Settled<T, E> {
        match self {
            Self::TimedOut => Settled::TimedOut,
            Self::DeadlineExceeded => Settled::DeadlineExceeded,
            Self::LimiterClosed => Settled::LimiterClosed,
            Self::Shed => Settled::Shed,
        }
    }
}

/// Where a fan-out's inputs live: those not started yet, and those
/// running. The engine tells it what to start and stop, and when.
pub(crate) trait Inputs {
    /// What the engine yields for one input.
    type Ended: Stamp;

    /// Whether an input is left to start.
    fn has_pending(&mut self) -> bool;

    /// How many inputs are left to start, as the iterator's size hint.
    fn pending_hint(&self) -> (usize, Option<usize>);

    /// How many inputs are running.
    fn running(&self) -> usize;

    /// How many inputs were taken so far (started or given up).
    fn taken(&self) -> usize;

    /// Starts the next input at `now`, holding `permit`; returns `false`
    /// when none is left. `per_item` is the fan-out's timeout (unless one
    /// shared timer covers it) and `deadline_at` the fan-out's deadline.
    fn start_next(
        &mut self,
        now: Instant,
        per_item: Option<Duration>,
        deadline_at: Option<Instant>,
        permit: Option<Permit>,
    ) -> bool;

    /// Gives up the next input without starting it, as `stop` at `at`,
    /// with one poll of its stale lookup; `None` when none is left.
    fn skip_next(&mut self, stop: Stop, at: Instant, cx: &mut Context<'_>) -> Option<Self::Ended>;

    /// Polls the running inputs: one that ended, `Pending`, or `None` when
    /// none is running.
    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::Ended>>;

    /// Stops every running input now, as `stop` (each one's own expiry,
    /// when due too, makes it `TimedOut`); returns them in input order.
    fn expire_running(
        &mut self,
        stop: Stop,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Vec<Self::Ended>;
}

/// The expiry of an input starting at `now` with its own `timeout` or else
/// the fan-out's `per_item`, and its own timer's instant: unset when the
/// shared deadline comes first. At a tie the own timer is kept, so the
/// input is `TimedOut` whatever the limits, as when every input shares one
/// timer.
pub(crate) fn expiry(
    now: Instant,
    timeout: Option<Duration>,
    per_item: Option<Duration>,
    deadline_at: Option<Instant>,
) -> (Option<Instant>, Option<Instant>) {
    let expiry = timeout.or(per_item).and_then(|t| now.checked_add(t));
    let own_timer = expiry.filter(|&at| deadline_at.is_none_or(|d| at <= d));
    (expiry, own_timer)
}

/// The engine: see the module docs.
pub(crate) struct Drive<I: Inputs> {
    inputs: I,
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
    /// Whether every input shares the fan-out's timeout (see
    /// [`Job::UNIFORM_TIMEOUT`]).
    uniform_timeout: bool,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    clock: Option<Clock>,
    expired: Option<Expired<I::Ended>>,
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

// Nothing in a `Drive` is pinned through it: a queue's started inputs live
// in `FuturesUnordered`'s own allocations and pending ones are only moved;
// a tuple's members are pinned by the caller, the drive holds references.
impl<I: Inputs> Unpin for Drive<I> {}

impl<It, J> Drive<Queue<It, J>>
where
    It: Iterator<Item = J>,
    J: Job,
{
    /// The engine of one fan-out over `jobs`, for `tenant` when it has one
    /// (a fair limiter puts each tenant in a line of its own).
    pub(crate) fn new(plan: &FanOut, tenant: Option<&TenantId>, jobs: It) -> Self {
        Self::with_inputs(plan, tenant, Queue::new(jobs), J::UNIFORM_TIMEOUT)
    }
}

impl<I: Inputs> Drive<I> {
    /// The engine of one fan-out over `inputs`; `uniform_timeout` as
    /// [`Job::UNIFORM_TIMEOUT`].
    pub(crate) fn with_inputs(
        plan: &FanOut,
        tenant: Option<&TenantId>,
        inputs: I,
        uniform_timeout: bool,
    ) -> Self {
        let limiter = plan.shared_limiter().cloned();
        let tenant = match limiter {
            Some(Limiter::Fair(_)) => tenant.cloned(),
            _ => None,
        };
        Self {
            inputs,
            limit: plan.concurrency_limit().map_or(usize::MAX, |n| n.get()),
            limiter,
            fifo: FifoWait::default(),
            ticket: None,
            tenant,
            queue_length: None,
            limiter_closed: false,
            shed: None,
            uniform_timeout,
            timeout: plan.per_item_timeout(),
            deadline: plan.whole_deadline(),
            clock: None,
            expired: None,
        }
    }

    /// How many inputs the fan-out has taken so far; once the stream has
    /// ended, how many it had in all.
    pub(crate) fn seen(&self) -> usize {
        self.inputs.taken()
    }

    /// The fair limiter's queue length (permits wanted by other fan-outs)
    /// when this fan-out joined its line; `None` without a fair limiter.
    pub(crate) fn queue_length(&self) -> Option<usize> {
        self.queue_length
    }

    fn start_clock(&self, now: Instant) -> Clock {
        let deadline_at = self.deadline.and_then(|d| now.checked_add(d));
        let all_start_now = self.limit == usize::MAX && self.limiter.is_none();
        if self.uniform_timeout && all_start_now {
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
    fn start_inputs(&mut self, now: Instant, cx: &mut Context<'_>) -> Option<I::Ended> {
        let (deadline_at, per_item) = match &self.clock {
            Some(clock) if !clock.first_poll_done || clock.deadline_at.is_none_or(|d| now < d) => {
                (clock.deadline_at, clock.per_item)
            }
            _ => return None,
        };
        while self.inputs.running() < self.limit && self.inputs.has_pending() {
            let permit = match &self.limiter {
                None => None,
                Some(_) if self.limiter_closed => {
                    return self.inputs.skip_next(Stop::LimiterClosed, now, cx);
                }
                Some(_) if self.shed.is_some() => {
                    return self.inputs.skip_next(Stop::Shed, now, cx);
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
                    let wanted = (self.limit - self.inputs.running())
                        .min(self.inputs.pending_hint().0)
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
                                        left = self.inputs.pending_hint().0,
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
            if !self.inputs.start_next(now, per_item, deadline_at, permit) {
                break;
            }
        }
        if !self.inputs.has_pending() {
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
    fn stamped(&self, mut ended: I::Ended) -> I::Ended {
        if let Some(clock) = &self.clock {
            // Most inputs start with the fan-out: no subtraction for them.
            let started_at = ended.started_at();
            if started_at != clock.started {
                ended.set_waited(started_at.saturating_duration_since(clock.started));
            }
        }
        ended
    }

    /// The shared timer fired: every input still running stops now, after
    /// one last poll of it and then of its stale lookup.
    fn expire(&mut self, timed_out: bool, now: Instant, cx: &mut Context<'_>) {
        let stop = if timed_out {
            Stop::TimedOut
        } else {
            Stop::DeadlineExceeded
        };
        let running = self.inputs.expire_running(stop, now, cx);
        self.fifo.cancel();
        self.ticket = None;
        self.expired = Some(Expired {
            running: running.into_iter(),
            at: now,
        });
    }

    fn next_expired(&mut self, cx: &mut Context<'_>) -> Option<I::Ended> {
        let expired = self.expired.as_mut()?;
        if let Some(ended) = expired.running.next() {
            return Some(ended);
        }
        let at = expired.at;
        self.inputs.skip_next(Stop::DeadlineExceeded, at, cx)
    }
}

impl<I: Inputs> Stream for Drive<I> {
    type Item = I::Ended;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_ended(cx)
            .map(|ended| ended.map(|ended| this.stamped(ended)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (low, high) = self.inputs.pending_hint();
        let running = self.inputs.running() + self.expired.as_ref().map_or(0, |e| e.running.len());
        (
            low.saturating_add(running),
            high.and_then(|h| h.checked_add(running)),
        )
    }
}

impl<I: Inputs> Drive<I> {
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<Option<I::Ended>> {
        let this = self;
        if this.expired.is_some() {
            return Poll::Ready(this.next_expired(cx));
        }
        // The clock is read when something needs it: starting inputs, or
        // checking the shared timer. A poll that only collects an input
        // that ended, the common one, reads nothing.
        let mut now = None;
        if this.clock.is_none() {
            let at = *now.get_or_insert_with(Instant::now);
            this.clock = Some(this.start_clock(at));
        }
        let started = match this.inputs.has_pending() {
            true => this.start_inputs(*now.get_or_insert_with(Instant::now), cx),
            false => {
                // Nothing left to start: leave the line, handing back
                // what was granted and not taken.
                this.ticket = None;
                None
            }
        };
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
        match this.inputs.poll_running(cx) {
            Poll::Ready(Some(ended)) => return Poll::Ready(Some(ended)),
            Poll::Ready(None) if !this.inputs.has_pending() => return Poll::Ready(None),
            // Empty but inputs remain: waiting for a limiter permit, or
            // past the shared expiry with inputs never started.
            Poll::Ready(None) | Poll::Pending => {}
        }
        let now = *now.get_or_insert_with(Instant::now);
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

/// The earlier of two optional instants, `None` standing for "never".
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
