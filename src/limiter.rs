//! The limiter a fan-out's inputs take permits from: a shared FIFO
//! [`Semaphore`] or a [`FairLimiter`]; and the permit a running input holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::FairLimiter;
use crate::fair::FairPermit;

/// What [`FanOut::limiter`](crate::FanOut::limiter) or
/// [`FanOut::fair_limiter`](crate::FanOut::fair_limiter) set.
#[derive(Clone, Debug)]
pub(crate) enum Limiter {
    Fifo(Arc<Semaphore>),
    Fair(FairLimiter),
}

/// Held by a running input: dropping it hands the permit back.
#[allow(dead_code)] // the semaphore permit is held for its `Drop`
pub(crate) enum Permit {
    Fifo(OwnedSemaphorePermit),
    Fair(FairPermit),
}

impl Permit {
    /// The input holding this permit ran to its answer.
    pub(crate) fn answered(&mut self) {
        if let Self::Fair(permit) = self {
            permit.answered();
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A fan-out's wait on a FIFO semaphore: one acquisition in flight at a
/// time, so the fan-out takes its place in the semaphore's queue once.
#[derive(Default)]
pub(crate) struct FifoWait(Option<Acquire>);

impl FifoWait {
    pub(crate) fn poll_permit(
        &mut self,
        semaphore: &Arc<Semaphore>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<OwnedSemaphorePermit, AcquireError>> {
        if self.0.is_none() {
            match Arc::clone(semaphore).try_acquire_owned() {
                Ok(permit) => return Poll::Ready(Ok(permit)),
                Err(TryAcquireError::NoPermits) | Err(TryAcquireError::Closed) => {}
            }
        }
        let acquire = self
            .0
            .get_or_insert_with(|| Box::pin(Arc::clone(semaphore).acquire_owned()));
        let permit = ready!(acquire.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(permit)
    }

    /// Leaves the semaphore's queue.
    pub(crate) fn cancel(&mut self) {
        self.0 = None;
    }
}
