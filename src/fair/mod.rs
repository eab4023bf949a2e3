//! [`FairLimiter`]: the connection pool's permits, shared fairly between
//! tenants, with load shedding.

mod queue;
mod ticket;

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use crate::TenantId;
use crate::running::panic_message;
use queue::Queue;
pub(crate) use ticket::{FairPermit, Refused, ShedReason, Ticket};

type Weights = Arc<dyn Fn(&TenantId) -> NonZeroU32 + Send + Sync>;

/// A limiter shared by every request of a service, like a
/// [`Semaphore`](tokio::sync::Semaphore) sized to the connection pool, that
/// hands its permits out fairly between tenants and sheds what cannot
/// finish in time. Pass it to [`FanOut::fair_limiter`](crate::FanOut::fair_limiter).
///
/// - **Fair.** When permits are short, the next one goes to the waiting
///   tenant holding the fewest (for its [weight](Self::tenant_weights));
///   among tenants holding as many, round-robin; within a tenant, first
///   come, first served, one dashboard at a time. A tenant that opens a
///   hundred dashboards at once waits behind its own backlog, not the
///   others' dashboards.
/// - **Work-conserving.** A tenant alone can use every permit, unless it
///   is [capped](Self::tenant_cap).
/// - **Shedding.** A query never waits for a permit past the time it could
///   still finish in: once the time left before its fan-out's deadline is
///   shorter than a query holds a permit on average, it leaves the line
///   and its widget degrades at once to its stale value or fallback
///   ([`Failure::Shed`](crate::Failure::Shed)), instead of starting a
///   query the deadline would cut off. The average is measured here, over
///   recent queries of every kind that ran to an answer (one cut short by
///   a timeout, a cancellation or a panic says nothing of how long queries
///   take); until a first query has answered there is none, and a query
///   waits until the deadline itself. With
///   [`standing_queue`](Self::standing_queue), a dashboard also gets a
///   short wait for its first permit when the queue has not emptied for a
///   while: under overload, fast degraded answers for some instead of late
///   answers for all.
///
/// Permits are held by running queries and handed back when each one ends,
/// is cancelled or panics. Cloning is cheap and shares the permits.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{FairLimiter, FanOut};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool_size = 10;
/// let limiter = FairLimiter::new(pool_size)
///     .standing_queue(Duration::from_millis(25), Duration::from_millis(250));
/// let fan_out = FanOut::new()
///     .deadline(Duration::from_secs(3))
///     .fair_limiter(limiter.clone());
/// let settled = fan_out.settle([async { Ok::<_, ()>(1) }]).await;
/// assert!(settled[0].is_ok());
/// assert_eq!(limiter.available(), pool_size); // the permit came back
/// # }
/// ```
#[derive(Clone)]
pub struct FairLimiter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    weights: Mutex<Option<Weights>>,
}

impl Shared {
    /// The queue. Nothing of ours panics while holding it (a waker's
    /// `clone` is called before any change), so a poisoned lock still
    /// holds a consistent queue and is used as it is.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FairLimiter {
    /// A limiter of `permits` permits (size it to the connection pool),
    /// with no tenant cap, every tenant of weight 1, and no standing-queue
    /// rule. With 0 permits nothing starts: every query waits until its
    /// deadline (for ever, without one).
    ///
    /// # Examples
    ///
    /// ```
    /// let limiter = fanout::FairLimiter::new(10);
    /// assert_eq!(limiter.available(), 10);
    /// ```
    pub fn new(permits: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::new(permits)),
                weights: Mutex::new(None),
            }),
        }
    }

    /// No tenant holds more than `cap` permits at once, even when others
    /// are free: a ceiling for one tenant's share of the pool. The limiter
    /// is then no longer work-conserving for a lone tenant.
    ///
    /// Applies to every clone of this limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// let limiter = fanout::FairLimiter::new(10).tenant_cap(NonZeroUsize::new(4).unwrap());
    /// # let _ = limiter;
    /// ```
    pub fn tenant_cap(self, cap: NonZeroUsize) -> Self {
        self.shared.lock().cap = Some(cap);
        self
    }

    /// Each tenant's weight: a tenant of weight 2 is served as if it held
    /// half the permits it holds (a paid tier, say). Called once per
    /// fan-out, outside the limiter's lock; a tenant keeps the weight it
    /// had when it began to hold or wait for permits. A panic in it counts
    /// as weight 1 (and is logged).
    ///
    /// Applies to every clone of this limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// let limiter = fanout::FairLimiter::new(10).tenant_weights(|tenant| {
    ///     let premium = tenant.as_str().starts_with("premium-");
    ///     NonZeroU32::new(if premium { 2 } else { 1 }).unwrap()
    /// });
    /// # let _ = limiter;
    /// ```
    pub fn tenant_weights(
        self,
        weights: impl Fn(&TenantId) -> NonZeroU32 + Send + Sync + 'static,
    ) -> Self {
        *self
            .shared
            .weights
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(weights));
        self
    }

    /// Sheds dashboards early under overload (the controlled-delay queue of
    /// Facebook's "Fail at Scale"): a dashboard waits at most `interval`
    /// for its first permit, and at most `target` when the queue has not
    /// been empty at any moment of the last `interval` (a standing queue:
    /// more work arrives than the pool can do). Its queries that did not
    /// start then degrade at once ([`Failure::Shed`](crate::Failure::Shed)).
    ///
    /// Without it, a dashboard waits as long as it can still finish before
    /// its deadline; past capacity that is every dashboard answering late,
    /// at its deadline. With it, the dashboards that are served are served
    /// in about the time a query takes plus `target`, and the rest degrade
    /// fast. Only the first permit is bounded: a dashboard that has started
    /// is not cut in half by this rule. See BENCHMARKS.md for what it
    /// buys on the example service.
    ///
    /// Applies to every clone of this limiter.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let limiter = fanout::FairLimiter::new(10)
    ///     .standing_queue(Duration::from_millis(25), Duration::from_millis(250));
    /// # let _ = limiter;
    /// ```
    pub fn standing_queue(self, target: Duration, interval: Duration) -> Self {
        self.shared.lock().standing = Some((target, interval));
        self
    }

    /// Permits free now.
    ///
    /// # Examples
    ///
    /// See [`FairLimiter`].
    pub fn available(&self) -> usize {
        self.shared.lock().available
    }

    /// Permits wanted by waiting fan-outs and not granted yet: the queue's
    /// length.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::FairLimiter::new(10).queued(), 0);
    /// ```
    pub fn queued(&self) -> usize {
        self.shared.lock().queued()
    }

    /// Tenants holding or waiting for permits. A tenant that does neither
    /// holds no state here.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::FairLimiter::new(10).tenants(), 0);
    /// ```
    pub fn tenants(&self) -> usize {
        self.shared.lock().tenants()
    }

    /// Closes the limiter: queries waiting for a permit, and any that come
    /// later, settle as [`LimiterClosed`](crate::Settled::LimiterClosed)
    /// without starting. Running queries finish.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::{FairLimiter, FanOut, Settled};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = FairLimiter::new(10);
    /// limiter.close();
    /// let settled = FanOut::new().fair_limiter(limiter).settle([async { Ok::<_, ()>(1) }]).await;
    /// assert_eq!(settled[0], Settled::LimiterClosed);
    /// # }
    /// ```
    pub fn close(&self) {
        let mut wake = Vec::new();
        self.shared.lock().close(&mut wake);
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// # Examples
    ///
    /// See [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// A place in line for one fan-out of `tenant`.
    pub(crate) fn ticket(&self, tenant: Option<&TenantId>) -> Ticket {
        let weights = self
            .shared
            .weights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let weight = match (weights, tenant) {
            (Some(weights), Some(tenant)) => {
                match catch_unwind(AssertUnwindSafe(|| weights(tenant))) {
                    Ok(weight) => u64::from(weight.get()),
                    Err(payload) => {
                        tracing::error!(%tenant, error = %panic_message(&*payload), "tenant weight panicked; using 1");
                        1
                    }
                }
            }
            _ => 1,
        };
        Ticket::new(self, tenant.cloned(), weight)
    }
}

impl fmt::Debug for FairLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.shared.lock();
        f.debug_struct("FairLimiter")
            .field("permits", &queue.permits)
            .field("available", &queue.available)
            .field("queued", &queue.queued())
            .field("tenants", &queue.tenants())
            .field("tenant_cap", &queue.cap)
            .field("standing_queue", &queue.standing)
            .field("closed", &queue.closed)
            .finish_non_exhaustive()
    }
}
