//! [`Drive`]: the engine under every fan-out. A stream of inputs as they
//! settle, in completion order, honouring the timeout, deadline,
//! concurrency limit and shared limiter of a [`FanOut`].

use std::future::Future;
use std::iter::{Enumerate, Peekable};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::running::{Ended, Running};
use crate::{FanOut, Settled};

/// One input of a fan-out, not yet started.
pub(crate) trait Job {
    type Ok;
    type Err;
    type Future: Future<Output = Result<Self::Ok, Self::Err>>;

    /// True when no job of this type overrides the fan-out's timeout. Such a
    /// fan-out, when every input starts at once, needs one timer in all.
    const UNIFORM_TIMEOUT: bool;

    /// This job's own timeout; `None` means the fan-out's.
    fn timeout(&self) -> Option<Duration>;

    /// Starts the job. `deadline` is the earlier of its own timeout and the
    /// fan-out's deadline, for jobs that pass it on (to a database, say).
    fn start(self, deadline: Option<Instant>) -> Self::Future;
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

    const UNIFORM_TIMEOUT: bool = true;

    fn timeout(&self) -> Option<Duration> {
        None
    }

    fn start(self, _deadline: Option<Instant>) -> F {
        self.0
    }
}

/// One settled input: its index, how it ended, and when it started and
/// ended (the same instant for an input that never started).
pub(crate) struct Finished<T, E> {
    pub(crate) index: usize,
    pub(crate) settled: Settled<T, E>,
    started_at: Instant,
    ended_at: Instant,
}

impl<T, E> Finished<T, E> {
    /// How long the input ran; computed on demand, as most callers log it
    /// only when logging is on.
    pub(crate) fn elapsed(&self) -> Duration {
        self.ended_at.saturating_duration_since(self.started_at)
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The engine: see the module docs.
pub(crate) struct Drive<It: Iterator, J: Job> {
    pending: Peekable<Enumerate<It>>,
    in_flight: FuturesUnordered<Running<J::Future>>,
    limit: usize,
    limiter: Option<Arc<Semaphore>>,
    acquiring: Option<Acquire>,
    limiter_closed: bool,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    clock: Option<Clock>,
    expired: Option<Expired>,
}

/// Set on the first poll, when the fan-out starts.
struct Clock {
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
struct Expired {
    running: std::vec::IntoIter<(usize, Instant)>,
    timed_out: bool,
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
    pub(crate) fn new(plan: &FanOut, jobs: It) -> Self {
        Self {
            pending: jobs.enumerate().peekable(),
            in_flight: FuturesUnordered::new(),
            limit: plan.concurrency_limit().map_or(usize::MAX, |n| n.get()),
            limiter: plan.shared_limiter().cloned(),
            acquiring: None,
            limiter_closed: false,
            timeout: plan.per_item_timeout(),
            deadline: plan.whole_deadline(),
            clock: None,
            expired: None,
        }
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
                deadline_at,
                per_item: None,
                shared_at,
                shared: None,
                shared_is_timeout: timeout_at.is_some() && timeout_at == shared_at,
            };
        }
        Clock {
            deadline_at,
            per_item: self.timeout,
            shared_at: deadline_at,
            shared: None,
            shared_is_timeout: false,
        }
    }

    /// Starts inputs while the limits allow; returns an input that settled
    /// without starting (the limiter was closed), if any.
    fn start_inputs(
        &mut self,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Option<Finished<J::Ok, J::Err>> {
        let (deadline_at, per_item) = match &self.clock {
            Some(clock) => (clock.deadline_at, clock.per_item),
            None => return None,
        };
        while self.in_flight.len() < self.limit && self.pending.peek().is_some() {
            let permit = match &self.limiter {
                None => None,
                Some(_) if self.limiter_closed => {
                    let (index, _job) = self.pending.next()?;
                    return Some(not_started(index, Settled::LimiterClosed, now));
                }
                Some(limiter) => match poll_permit(limiter, &mut self.acquiring, cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(permit)) => Some(permit),
                    Poll::Ready(Err(_closed)) => {
                        self.limiter_closed = true;
                        continue;
                    }
                },
            };
            let Some((index, job)) = self.pending.next() else {
                break;
            };
            let expiry = job.timeout().or(per_item).and_then(|t| now.checked_add(t));
            // Its own timer only when it would fire before the shared one.
            let own_timer = expiry.filter(|&at| deadline_at.is_none_or(|d| at < d));
            let input = job.start(earliest(expiry, deadline_at));
            self.in_flight
                .push(Running::new(input, index, now, own_timer, permit));
        }
        None
    }

    fn expire(&mut self, timed_out: bool, now: Instant) {
        let mut running: Vec<(usize, Instant)> = Pin::new(&self.in_flight)
            .iter_pin_ref()
            .map(|input| (input.index(), input.started_at()))
            .collect();
        running.sort_unstable_by_key(|&(index, _)| index);
        // Dropping the inputs is what cancels them.
        self.in_flight.clear();
        self.acquiring = None;
        self.expired = Some(Expired {
            running: running.into_iter(),
            timed_out,
            at: now,
        });
    }

    fn next_expired(&mut self) -> Option<Finished<J::Ok, J::Err>> {
        let expired = self.expired.as_mut()?;
        if let Some((index, started_at)) = expired.running.next() {
            let settled = if expired.timed_out {
                Settled::TimedOut
            } else {
                Settled::DeadlineExceeded
            };
            return Some(Finished {
                index,
                settled,
                started_at,
                ended_at: expired.at,
            });
        }
        let (index, _job) = self.pending.next()?;
        Some(not_started(index, Settled::DeadlineExceeded, expired.at))
    }
}

impl<It, J> Stream for Drive<It, J>
where
    It: Iterator<Item = J>,
    J: Job,
{
    type Item = Finished<J::Ok, J::Err>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired.is_some() {
            return Poll::Ready(this.next_expired());
        }
        let now = Instant::now();
        if this.clock.is_none() {
            this.clock = Some(this.start_clock(now));
        }
        if let Some(finished) = this.start_inputs(now, cx) {
            return Poll::Ready(Some(finished));
        }
        // Inputs are polled before the shared timer, so an input that is
        // ready is never reported as expired.
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some(Ended {
                index,
                started_at,
                settled,
            })) => {
                return Poll::Ready(Some(Finished {
                    index,
                    settled,
                    started_at,
                    ended_at: now,
                }));
            }
            Poll::Ready(None) if this.pending.peek().is_none() => return Poll::Ready(None),
            // Empty but inputs remain: waiting for a limiter permit.
            Poll::Ready(None) | Poll::Pending => {}
        }
        if let Some(clock) = this.clock.as_mut()
            && let Some(at) = clock.shared_at
            && clock
                .shared
                .get_or_insert_with(|| Box::pin(sleep_until(at)))
                .as_mut()
                .poll(cx)
                .is_ready()
        {
            let timed_out = clock.shared_is_timeout;
            this.expire(timed_out, now);
            return Poll::Ready(this.next_expired());
        }
        Poll::Pending
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

fn not_started<T, E>(index: usize, settled: Settled<T, E>, at: Instant) -> Finished<T, E> {
    Finished {
        index,
        settled,
        started_at: at,
        ended_at: at,
    }
}

/// Polls for a permit, keeping one acquisition in flight at a time so the
/// fan-out takes its place in the semaphore's fair queue once.
fn poll_permit(
    limiter: &Arc<Semaphore>,
    acquiring: &mut Option<Acquire>,
    cx: &mut Context<'_>,
) -> Poll<Result<OwnedSemaphorePermit, AcquireError>> {
    if acquiring.is_none() {
        match Arc::clone(limiter).try_acquire_owned() {
            Ok(permit) => return Poll::Ready(Ok(permit)),
            Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => {}
        }
    }
    let acquire = acquiring.get_or_insert_with(|| Box::pin(Arc::clone(limiter).acquire_owned()));
    let permit = ready!(acquire.as_mut().poll(cx));
    *acquiring = None;
    Poll::Ready(permit)
}

/// The earlier of two optional instants, `None` standing for "never".
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
