//! [`Running`]: one started input, with panic isolation, its own timer when
//! it needs one, and its limiter permit.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::Settled;

pin_project! {
    /// An input that has started. Resolves to its index, its start time and
    /// how it ended; the input itself is dropped with this future, which
    /// `FuturesUnordered` does as soon as it resolves.
    #[must_use = "futures do nothing unless you .await or poll them"]
    pub(crate) struct Running<F> {
        #[pin]
        input: F,
        index: usize,
        started_at: Instant,
        // Only set when this input's own timeout ends before anything shared
        // would stop it; the timer is armed on the first `Pending`, so an
        // input that is ready at once never touches the timer wheel.
        expiry: Option<Instant>,
        #[pin]
        timer: Option<Sleep>,
        // Held, never read: dropping it (on completion or cancellation) hands
        // the permit back.
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> Running<F> {
    pub(crate) fn new(
        input: F,
        index: usize,
        started_at: Instant,
        expiry: Option<Instant>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            input,
            index,
            started_at,
            expiry,
            timer: None,
            _permit: permit,
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    pub(crate) fn started_at(&self) -> Instant {
        self.started_at
    }
}

/// What a [`Running`] input resolves to.
pub(crate) struct Ended<T, E> {
    pub(crate) index: usize,
    pub(crate) started_at: Instant,
    pub(crate) settled: Settled<T, E>,
}

impl<F, T, E> Future for Running<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Ended<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let settled = ready!(poll_input(this.input, this.expiry, this.timer, cx));
        Poll::Ready(Ended {
            index: *this.index,
            started_at: *this.started_at,
            settled,
        })
    }
}

fn poll_input<F, T, E>(
    input: Pin<&mut F>,
    expiry: &Option<Instant>,
    mut timer: Pin<&mut Option<Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<Settled<T, E>>
where
    F: Future<Output = Result<T, E>>,
{
    // The input is polled before its timer, so an input that is ready never
    // times out, whatever the timeout.
    match catch_unwind(AssertUnwindSafe(|| input.poll(cx))) {
        Ok(Poll::Ready(Ok(value))) => return Poll::Ready(Settled::Ok(value)),
        Ok(Poll::Ready(Err(error))) => return Poll::Ready(Settled::Err(error)),
        Err(payload) => return Poll::Ready(Settled::Panicked(panic_message(&*payload))),
        Ok(Poll::Pending) => {}
    }
    if let Some(expiry) = *expiry {
        if timer.is_none() {
            timer.set(Some(sleep_until(expiry)));
        }
        if let Some(timer) = timer.as_pin_mut()
            && timer.poll(cx).is_ready()
        {
            return Poll::Ready(Settled::TimedOut);
        }
    }
    Poll::Pending
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
