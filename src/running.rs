//! [`Running`]: one started input for the whole of its life: its future,
//! then, if that fails, its stale lookup; with its own timer when it needs
//! one, its limiter permit, and every panic of user code (in `poll` or in
//! `Drop`) contained.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::Settled;
use crate::drive::{Ended, Recover};
use crate::limiter::Permit;

pin_project! {
    /// An input that has started. Resolves to its [`Ended`]: how its future
    /// ended and, when that was a failure, what its stale lookup found.
    ///
    /// The input, then the lookup, are dropped as soon as they are done,
    /// inside `catch_unwind`: a `Drop` that panics becomes this input's
    /// `Panicked` (or "no stale value"), never its siblings' problem.
    #[must_use = "futures do nothing unless you .await or poll them"]
    pub(crate) struct Running<F, T, E, R: Recover> {
        #[pin]
        input: Option<F>,
        #[pin]
        lookup: Option<R::Future>,
        recover: Option<R>,
        // How the input ended, once it has: kept while its lookup runs.
        settled: Option<Settled<T, E>>,
        index: usize,
        name: &'static str,
        started_at: Instant,
        ended_at: Instant,
        // When this input stops, load and lookup alike; only set when that
        // comes before anything shared would stop it. The timer is armed on
        // the first `Pending`, so an input that is ready at once never
        // touches the timer wheel.
        expiry: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
        // Held, never read: dropping it hands the permit back. Released when
        // the input ends, before its lookup: a lookup holds no connection.
        permit: Option<Permit>,
    }

    impl<F, T, E, R: Recover> PinnedDrop for Running<F, T, E, R> {
        fn drop(this: Pin<&mut Self>) {
            // Cancelled (the fan-out was dropped, or ran out of time): there
            // is no result left to spoil, so a panicking `Drop` is logged.
            let mut this = this.project();
            if let Some(message) = drop_contained(this.input.as_mut()) {
                tracing::error!(index = *this.index, error = %message, "input panicked while being dropped");
            }
            if let Some(message) = drop_contained(this.lookup.as_mut()) {
                tracing::error!(index = *this.index, error = %message, "stale lookup panicked while being dropped");
            }
        }
    }
}

impl<F, T, E, R> Running<F, T, E, R>
where
    F: Future<Output = Result<T, E>>,
    R: Recover,
{
    pub(crate) fn new(
        input: F,
        recover: R,
        index: usize,
        name: &'static str,
        started_at: Instant,
        expiry: Option<Instant>,
        permit: Option<Permit>,
    ) -> Self {
        Self {
            input: Some(input),
            lookup: None,
            recover: Some(recover),
            settled: None,
            index,
            name,
            started_at,
            ended_at: started_at,
            expiry,
            timer: None,
            permit,
        }
    }

    /// Stops this input where it is, at the shared deadline or timeout:
    /// an input still running gets one last poll (it may have been woken
    /// and not yet polled: `FuturesUnordered` yields to the scheduler
    /// after a few self-wakes), and if it is still not ready it is dropped
    /// and settles as `cause`; then its stale lookup gets one poll (a
    /// lookup that is ready, such as an in-process cache, still counts).
    pub(crate) fn expire(
        self: Pin<&mut Self>,
        cause: Settled<T, E>,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Ended<T, E, R::Value> {
        let mut this = self;
        // An input whose own timeout is also due (a tie, or its timer's tick
        // not reached yet on a real clock) timed out, as it would have
        // without the shared timer.
        let cause = match this.expiry {
            Some(expiry) if expiry <= now => Settled::TimedOut,
            _ => cause,
        };
        if let Some(input) = this.as_mut().project().input.as_pin_mut() {
            let settled = match catch_unwind(AssertUnwindSafe(|| input.poll(cx))) {
                Ok(Poll::Ready(Ok(value))) => Settled::Ok(value),
                Ok(Poll::Ready(Err(error))) => Settled::Err(error),
                Err(payload) => Settled::Panicked(panic_message(&*payload)),
                Ok(Poll::Pending) => cause,
            };
            this.as_mut().input_ended(settled, now);
        }
        match this.as_mut().poll_lookup(cx, true) {
            Poll::Ready(ended) => ended,
            Poll::Pending => unreachable!("a lookup polled at expiry always ends"),
        }
    }

    /// The input's future has ended (or was stopped) with `settled`: drop
    /// it, hand the permit back and start its stale lookup if it failed.
    fn input_ended(self: Pin<&mut Self>, settled: Settled<T, E>, now: Instant) {
        let mut this = self.project();
        let settled = match drop_contained(this.input.as_mut()) {
            Some(message) => Settled::Panicked(message),
            None => settled,
        };
        if matches!(settled, Settled::Ok(_) | Settled::Err(_))
            && let Some(permit) = this.permit.as_mut()
        {
            permit.answered();
        }
        *this.permit = None;
        *this.ended_at = now;
        if !settled.is_ok()
            && let Some(recover) = this.recover.take()
        {
            // Building the lookup runs no user code (see `Recover`).
            this.lookup.set(recover.recover());
        }
        *this.settled = Some(settled);
    }

    /// Polls the stale lookup, if any; with `last_chance`, whatever is not
    /// ready now counts as "no stale value".
    fn poll_lookup(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        last_chance: bool,
    ) -> Poll<Ended<T, E, R::Value>> {
        let mut this = self.project();
        let stale = match this.lookup.as_mut().as_pin_mut() {
            None => None,
            Some(lookup) => match catch_unwind(AssertUnwindSafe(|| lookup.poll(cx))) {
                Ok(Poll::Ready(found)) => found,
                Ok(Poll::Pending) if !last_chance => return Poll::Pending,
                Ok(Poll::Pending) => None,
                Err(payload) => {
                    tracing::error!(index = *this.index, error = %panic_message(&*payload), "stale lookup panicked");
                    None
                }
            },
        };
        // A lookup whose `Drop` panics found nothing usable.
        let stale = match drop_contained(this.lookup.as_mut()) {
            Some(message) => {
                tracing::error!(index = *this.index, error = %message, "stale lookup panicked while being dropped");
                None
            }
            None => stale,
        };
        let settled = this
            .settled
            .take()
            .expect("fanout bug: a lookup ended before its input");
        Poll::Ready(Ended {
            index: *this.index,
            name: this.name,
            settled,
            stale,
            started_at: *this.started_at,
            ended_at: *this.ended_at,
            waited: std::time::Duration::ZERO,
        })
    }

    /// Whether this input's own timer, armed on first use, has fired.
    fn timer_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let mut this = self.project();
        let Some(expiry) = *this.expiry else {
            return false;
        };
        if this.timer.is_none() {
            this.timer.set(Some(sleep_until(expiry)));
        }
        this.timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(cx).is_ready())
    }
}

impl<F, T, E, R> Future for Running<F, T, E, R>
where
    F: Future<Output = Result<T, E>>,
    R: Recover,
{
    type Output = Ended<T, E, R::Value>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut timed_out = false;
        if let Some(input) = self.as_mut().project().input.as_pin_mut() {
            // The input is polled before its timer, so an input that is
            // ready never times out, whatever the timeout.
            let settled = match catch_unwind(AssertUnwindSafe(|| input.poll(cx))) {
                Ok(Poll::Ready(Ok(value))) => Settled::Ok(value),
                Ok(Poll::Ready(Err(error))) => Settled::Err(error),
                Err(payload) => Settled::Panicked(panic_message(&*payload)),
                Ok(Poll::Pending) if self.as_mut().timer_fired(cx) => {
                    timed_out = true;
                    Settled::TimedOut
                }
                Ok(Poll::Pending) => return Poll::Pending,
            };
            // The engine reads the clock once per poll; inputs read it only
            // when they end, which is rare next to being polled.
            self.as_mut().input_ended(settled, Instant::now());
        }
        // The lookup shares the input's timer: a query's own timeout bounds
        // its lookup too. It is polled at least once, so a lookup that is
        // ready (an in-process cache) is used even at the timeout.
        if timed_out {
            return self.poll_lookup(cx, true);
        }
        match self.as_mut().poll_lookup(cx, false) {
            Poll::Ready(ended) => Poll::Ready(ended),
            Poll::Pending if self.as_mut().timer_fired(cx) => self.poll_lookup(cx, true),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Drops what `slot` holds, catching a panic in its `Drop`; returns the
/// panic's message.
fn drop_contained<T>(mut slot: Pin<&mut Option<T>>) -> Option<String> {
    if slot.is_none() {
        return None;
    }
    // Assignment writes `None` even when dropping the old value unwinds.
    catch_unwind(AssertUnwindSafe(|| slot.set(None)))
        .err()
        .map(|payload| panic_message(&*payload))
}

/// The message of a panic payload: what `panic!` was given when it was a
/// string, as almost every panic's is.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic payload is not a string".to_owned()
    }
}
