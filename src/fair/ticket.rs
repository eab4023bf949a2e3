//! A fan-out's place in a [`FairLimiter`]'s line ([`Ticket`]), and the
//! permits it is granted ([`FairPermit`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep, sleep_until};

use super::queue::Key;
use super::{FairLimiter, Shared};
use crate::drive::earliest;

/// Why a fan-out got no permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The limiter was closed.
    Closed,
    /// It left the line: its queries could no longer finish in time.
    Shed(ShedReason),
}

/// Why a fan-out's queries were shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShedReason {
    /// Less time was left before the deadline than a query takes.
    NoTimeLeft,
    /// It waited its longest for a first permit (see
    /// [`FairLimiter::standing_queue`]).
    StandingQueue,
}

impl ShedReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::NoTimeLeft => "no_time_left",
            Self::StandingQueue => "standing_queue",
        }
    }
}

/// One fan-out's place in line. It joins on its first poll and leaves when
/// dropped, handing back whatever it was granted and did not take.
pub(crate) struct Ticket {
    limiter: Arc<Shared>,
    key: Key,
    weight: u64,
    id: Option<u64>,
    /// Whether it has had a permit: the standing-queue rule bounds only the
    /// wait for the first.
    admitted: bool,
    /// When the standing-queue rule sends it away, if it is not admitted.
    admit_by: Option<Instant>,
    /// The queue's length (permits wanted by others) when it joined.
    queue_length: Option<usize>,
    timer: Option<Pin<Box<Sleep>>>,
}

/// A permit of a [`FairLimiter`], held by a running query; dropping it
/// hands the permit to the next in line.
pub(crate) struct FairPermit {
    limiter: Arc<Shared>,
    key: Key,
    taken_at: Instant,
    /// Set when the query ran to its answer: only then does its hold time
    /// say how long a query takes.
    answered: bool,
}

impl FairPermit {
    /// The query holding this permit ran to its answer (a value or an
    /// error), rather than being cut short.
    pub(crate) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Ticket {
    pub(crate) fn new(limiter: &FairLimiter, key: Key, weight: u64) -> Self {
        Self {
            limiter: Arc::clone(&limiter.shared),
            key,
            weight,
            id: None,
            admitted: false,
            admit_by: None,
            queue_length: None,
            timer: None,
        }
    }

    /// The queue's length when this fan-out joined the line.
    pub(crate) fn queue_length(&self) -> Option<usize> {
        self.queue_length
    }

    /// One permit, for a fan-out that wants `wanted` in all now and must
    /// be done by `deadline`. Pending until one is granted; refused when
    /// the limiter closes or the fan-out can no longer finish in time.
    pub(crate) fn poll_permit(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        wanted: usize,
        deadline: Option<Instant>,
    ) -> Poll<Result<FairPermit, Refused>> {
        let mut now = now;
        loop {
            let mut wake = Vec::new();
            let step = self.step(cx.waker(), now, wanted, deadline, &mut wake);
            // Wakers run outside the lock: a waker may run any code.
            wake.into_iter().for_each(Waker::wake);
            let give_up_at = match step {
                Step::Done(result) => return Poll::Ready(result),
                Step::Wait(give_up_at) => give_up_at,
            };
            let Some(at) = give_up_at else {
                return Poll::Pending;
            };
            let timer = match &mut self.timer {
                Some(timer) if timer.deadline() == at => timer,
                slot => slot.insert(Box::pin(sleep_until(at))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Time is up; a permit granted meanwhile is still taken.
            now = now.max(at);
        }
    }

    fn step(
        &mut self,
        waker: &Waker,
        now: Instant,
        wanted: usize,
        deadline: Option<Instant>,
        wake: &mut Vec<Waker>,
    ) -> Step {
        let mut queue = self.limiter.lock();
        if queue.closed {
            return Step::Done(Err(Refused::Closed));
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                self.queue_length = Some(queue.queued());
                if let Some((target, interval)) = queue.standing {
                    let wait = if queue.is_standing(now, interval) {
                        target
                    } else {
                        interval
                    };
                    self.admit_by = now.checked_add(wait);
                }
                *self.id.insert(queue.join(&self.key, self.weight))
            }
        };
        queue.want(&self.key, id, wanted, waker, now, wake);
        if queue.take(&self.key, id) {
            self.admitted = true;
            return Step::Done(Ok(FairPermit {
                limiter: Arc::clone(&self.limiter),
                key: self.key.clone(),
                taken_at: now,
                answered: false,
            }));
        }
        // A query that starts with less time left than a query takes
        // would be cut off: shed it now, while it can still degrade.
        let mean_hold = queue.mean_hold();
        let finish_by =
            deadline.and_then(|d| (!mean_hold.is_zero()).then(|| d.checked_sub(mean_hold))?);
        let admit_by = self.admit_by.filter(|_| !self.admitted);
        let give_up_at = earliest(finish_by, admit_by);
        match give_up_at {
            Some(at) if now >= at => {
                let reason = if admit_by == Some(at) {
                    ShedReason::StandingQueue
                } else {
                    ShedReason::NoTimeLeft
                };
                queue.leave(&self.key, id, now, wake);
                self.id = None;
                Step::Done(Err(Refused::Shed(reason)))
            }
            _ => Step::Wait(give_up_at),
        }
    }
}

enum Step {
    Done(Result<FairPermit, Refused>),
    Wait(Option<Instant>),
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(id) = self.id else {
            return;
        };
        let mut wake = Vec::new();
        self.limiter
            .lock()
            .leave(&self.key, id, Instant::now(), &mut wake);
        wake.into_iter().for_each(Waker::wake);
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut wake = Vec::new();
        let held_for = self
            .answered
            .then(|| now.saturating_duration_since(self.taken_at));
        self.limiter
            .lock()
            .release(&self.key, held_for, now, &mut wake);
        wake.into_iter().for_each(Waker::wake);
    }
}
