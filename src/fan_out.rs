//! [`FanOut`]: the reusable configuration of a fan-out, and its entry
//! points.

use std::fmt::Display;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::drive::{Drive, Eager};
use crate::in_order::InOrder;
use crate::limiter::Limiter;
use crate::query_set::QuerySet;
use crate::{DashboardQuery, FairLimiter, Report, Settled, TenantId, log};

/// How to run a fan-out: timeouts, deadline and concurrency, set once and
/// reused for every call.
///
/// `FanOut::new()` sets **no timeout and no deadline**: inputs may run for
/// ever. Set both for anything that talks to a database.
///
/// Cloning is cheap (a few words and, with [`limiter`](Self::limiter), an
/// `Arc`), so a service builds one at start-up and shares it.
///
/// Every entry point polls its inputs concurrently inside the calling task:
/// nothing is spawned, inputs may borrow (`&pool`), and dropping the
/// returned future drops every input still in flight. The returned futures
/// are `Send` whenever the inputs and their outputs are.
///
/// # Examples
///
/// The reference dashboard's limits: 2 s for each query, 3 s for the whole,
/// at most 4 queries at once.
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use fanout::{FanOut, Settled};
/// use futures_util::future::BoxFuture;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let fan_out = FanOut::new()
///     .timeout(Duration::from_secs(2))
///     .deadline(Duration::from_secs(3))
///     .concurrency(NonZeroUsize::new(4).unwrap());
///
/// let slow: BoxFuture<'_, Result<u8, ()>> = Box::pin(async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok(1)
/// });
/// let fast: BoxFuture<'_, Result<u8, ()>> = Box::pin(async { Ok(2) });
///
/// let started = tokio::time::Instant::now();
/// assert_eq!(fan_out.settle([slow, fast]).await, [Settled::TimedOut, Settled::Ok(2)]);
/// assert_eq!(started.elapsed(), Duration::from_secs(2));
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct FanOut {
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    concurrency: Option<NonZeroUsize>,
    limiter: Option<Limiter>,
}

impl FanOut {
    /// A fan-out with no timeout, no deadline and no concurrency limit.
    ///
    /// # Examples
    ///
    /// ```
    /// let fan_out = fanout::FanOut::new();
    /// # let _ = fan_out;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits each input to `per_item`, counted from when that input starts
    /// (under a concurrency limit, inputs start as others finish). An input
    /// past it is dropped and settles as [`Settled::TimedOut`].
    ///
    /// An input that is ready when first polled succeeds even with
    /// `Duration::ZERO`. Durations too large to add to the current time
    /// (`Duration::MAX`) mean no timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{FanOut, Settled};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let fan_out = FanOut::new().timeout(Duration::from_millis(100));
    /// let never = std::future::pending::<Result<(), ()>>();
    /// assert_eq!(fan_out.settle([never]).await, [Settled::TimedOut]);
    /// # }
    /// ```
    pub fn timeout(mut self, per_item: Duration) -> Self {
        self.timeout = Some(per_item);
        self
    }

    /// Limits the whole fan-out to `whole`, counted from when it is first
    /// polled. When it passes, inputs still running are dropped and inputs
    /// not yet started are never polled; all of them settle as
    /// [`Settled::DeadlineExceeded`]. No input starts at or after the
    /// deadline (a slot that frees exactly then starts nothing), except that
    /// the inputs that start with the fan-out always get their first poll.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use std::time::Duration;
    /// use fanout::{FanOut, Settled};
    /// use futures_util::future::BoxFuture;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let fan_out = FanOut::new().deadline(Duration::from_secs(1)).sequential();
    /// let one_second = || -> BoxFuture<'static, Result<(), ()>> {
    ///     Box::pin(async { tokio::time::sleep(Duration::from_millis(600)).await; Ok(()) })
    /// };
    /// let settled = fan_out.settle([one_second(), one_second(), one_second()]).await;
    /// assert_eq!(settled, [Settled::Ok(()), Settled::DeadlineExceeded, Settled::DeadlineExceeded]);
    /// # }
    /// ```
    pub fn deadline(mut self, whole: Duration) -> Self {
        self.deadline = Some(whole);
        self
    }

    /// Runs at most `limit` inputs at a time; the rest start, in input
    /// order, as running ones finish. Protects what the inputs share (a
    /// connection pool) within one fan-out; see [`limiter`](Self::limiter)
    /// for a limit across fan-outs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use std::time::Duration;
    /// use fanout::FanOut;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let two_at_a_time = FanOut::new().concurrency(NonZeroUsize::new(2).unwrap());
    /// let inputs = (0..4).map(|i| async move {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     Ok::<_, ()>(i)
    /// });
    /// let started = tokio::time::Instant::now();
    /// two_at_a_time.settle(inputs).await;
    /// assert_eq!(started.elapsed(), Duration::from_secs(2));
    /// # }
    /// ```
    pub fn concurrency(mut self, limit: NonZeroUsize) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// Makes every input hold one permit of `shared` while it runs, so that
    /// all fan-outs using the same semaphore (every request of a service)
    /// together run at most its number of permits. Size it to the
    /// connection pool and no request waits for a connection inside a query,
    /// where the query's timeout would be ticking.
    ///
    /// Inputs wait for a permit in input order, in the semaphore's
    /// first-come, first-served queue, one permit at a time; an input's
    /// timeout starts once it has its permit. The permit is released when
    /// the input completes or is dropped. If the semaphore is closed, inputs
    /// that have not started settle as [`Settled::LimiterClosed`].
    ///
    /// Every tenant shares that one queue: a tenant that opens a hundred
    /// dashboards at once makes every other tenant wait behind them, and
    /// past capacity every dashboard waits until its deadline. For a
    /// multi-tenant service, see [`fair_limiter`](Self::fair_limiter).
    /// Replaces a fair limiter set before.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fanout::FanOut;
    /// use tokio::sync::Semaphore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let pool_size = 10;
    /// let fan_out = FanOut::new().limiter(Arc::new(Semaphore::new(pool_size)));
    /// let per_request = fan_out.clone(); // shares the same semaphore
    /// let settled = per_request.settle([async { Ok::<_, ()>(1) }]).await;
    /// assert!(settled[0].is_ok());
    /// # }
    /// ```
    pub fn limiter(mut self, shared: Arc<Semaphore>) -> Self {
        self.limiter = Some(Limiter::Fifo(shared));
        self
    }

    /// Makes every input hold one permit of `shared` while it runs, like
    /// [`limiter`](Self::limiter), with the permits shared fairly between
    /// tenants and shed when they cannot be had in time: see
    /// [`FairLimiter`].
    ///
    /// A fan-out waits in its tenant's line (those without a tenant,
    /// [`settle`](Self::settle) and [`stream`](Self::stream), share one
    /// line) for as many permits as it can start inputs; an input's timeout
    /// starts once it has its permit. Inputs the limiter sheds settle as
    /// [`Settled::Shed`] (a dashboard query shows its stale value or
    /// fallback) without starting; if the limiter is closed, as
    /// [`Settled::LimiterClosed`]. Replaces a semaphore set before.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{FairLimiter, FanOut, Settled};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // One permit, busy for a second; a fan-out due in half a second
    /// // waits for it until its deadline. (Once the limiter has measured
    /// // how long queries hold a permit, such an input leaves earlier, as
    /// // `Settled::Shed`, when too little time is left to finish.)
    /// let limiter = FairLimiter::new(1);
    /// let busy = FanOut::new().fair_limiter(limiter.clone());
    /// let hurried = busy.clone().deadline(Duration::from_millis(500));
    /// let slow = async {
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    ///     Ok::<_, ()>(1)
    /// };
    /// let (first, second) = tokio::join!(
    ///     busy.settle([slow]),
    ///     async {
    ///         tokio::task::yield_now().await; // arrive second
    ///         hurried.settle([async { Ok::<_, ()>(2) }]).await
    ///     },
    /// );
    /// assert_eq!(first, [Settled::Ok(1)]);
    /// assert_eq!(second, [Settled::DeadlineExceeded]);
    /// # }
    /// ```
    pub fn fair_limiter(mut self, shared: FairLimiter) -> Self {
        self.limiter = Some(Limiter::Fair(shared));
        self
    }

    /// Runs one input at a time, in input order: the same results as the
    /// concurrent path, at the cost of the sum of the latencies. The switch
    /// to flip when concurrency itself is suspected. Same as
    /// `concurrency(1)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::FanOut;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let inputs = || [250, 200, 150].map(|ms| async move {
    ///     tokio::time::sleep(Duration::from_millis(ms)).await;
    ///     Ok::<_, ()>(ms)
    /// });
    /// let started = tokio::time::Instant::now();
    /// let sequential = FanOut::new().sequential().settle(inputs()).await;
    /// assert_eq!(started.elapsed(), Duration::from_millis(600));
    /// assert_eq!(sequential, FanOut::new().settle(inputs()).await);
    /// # }
    /// ```
    pub fn sequential(self) -> Self {
        self.concurrency(NonZeroUsize::MIN)
    }

    /// Runs every future concurrently and reports how each one ended, in
    /// input order: `Ok`, `Err`, [`TimedOut`](Settled::TimedOut),
    /// [`DeadlineExceeded`](Settled::DeadlineExceeded),
    /// [`Panicked`](Settled::Panicked) or
    /// [`LimiterClosed`](Settled::LimiterClosed).
    ///
    /// Every input yields exactly one result. Cost grows linearly with the
    /// number of inputs: only inputs that were woken are polled again, and
    /// when every input starts at once under the same timeout they share one
    /// timer. Each failure is logged (see the crate docs), with its index.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{FanOut, Settled};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let ids = [1_u32, 2, 3];
    /// let lookups = ids.iter().map(|id| async move {
    ///     if *id == 2 { Err(format!("no row {id}")) } else { Ok(id * 10) }
    /// });
    /// let settled = FanOut::new().timeout(Duration::from_secs(1)).settle(lookups).await;
    /// assert_eq!(settled, [Settled::Ok(10), Settled::Err("no row 2".into()), Settled::Ok(30)]);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Never because of an input: an input that panics when polled or when
    /// dropped becomes [`Settled::Panicked`] (the panic hook still runs, so
    /// the default hook prints it to stderr). Like any tokio timer, needs a tokio runtime
    /// with the time driver when a timeout or deadline is set.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops every input still in flight and
    /// releases their limiter permits; inputs not yet started are dropped
    /// without being polled.
    pub async fn settle<I, F, T, E>(&self, futures: I) -> Vec<Settled<T, E>>
    where
        I: IntoIterator<Item = F>,
        F: Future<Output = Result<T, E>>,
    {
        self.settle_logged(futures, |_| None).await
    }

    /// Runs every future concurrently and returns its value, or the paired
    /// fallback value when it fails, times out, misses the deadline or
    /// panics; every failure is logged with its index and error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::FanOut;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    /// let pairs = [(100_u64, 0_u64), (5_000, 0)].map(|(ms, fallback)| {
    ///     let query = async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         Ok::<_, String>(ms)
    ///     };
    ///     (query, fallback)
    /// });
    /// assert_eq!(fan_out.with_defaults(pairs).await, [100, 0]);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// As [`settle`](Self::settle).
    pub async fn with_defaults<I, F, T, E>(&self, pairs: I) -> Vec<T>
    where
        I: IntoIterator<Item = (F, T)>,
        F: Future<Output = Result<T, E>>,
        E: Display,
    {
        let mut fallbacks = Vec::new();
        let futures = pairs.into_iter().map(|(future, fallback)| {
            fallbacks.push(fallback);
            future
        });
        let settled = self
            .settle_logged(futures, |e| Some(e as &dyn Display))
            .await;
        settled
            .into_iter()
            .zip(fallbacks)
            .map(|(settled, fallback)| settled.ok().unwrap_or(fallback))
            .collect()
    }

    /// Runs a tenant's dashboard: every query of `queries` concurrently,
    /// each under its own timeout (or this fan-out's), all under the
    /// deadline; returns every query's [`Outcome`](crate::Outcome), in the
    /// shape of `queries` (a tuple of outcomes for a tuple of queries, a
    /// `Vec` for a `Vec`).
    ///
    /// A failed, timed-out, late or panicking query gets its
    /// [`fallback`](crate::DashboardQuery::fallback) and one WARN (ERROR
    /// for a panic) event with the fields `tenant`, `query`, `outcome`,
    /// `elapsed_ms`; the others are unaffected.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
    ///
    /// struct Sleepy(&'static str, u64);
    ///
    /// impl DashboardQuery for Sleepy {
    ///     type Output = u64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { self.0 }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<u64, std::io::Error> {
    ///         tokio::time::sleep(Duration::from_millis(self.1)).await;
    ///         Ok(self.1)
    ///     }
    ///     fn fallback(&self) -> u64 { 0 }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    /// let tenant = TenantId::new("creche-1")?;
    /// let (revenue, payments) = fan_out
    ///     .run(&tenant, (Sleepy("total_revenue", 250), Sleepy("recent_payments", 350)))
    ///     .await;
    /// assert_eq!((revenue.value, payments.value), (250, 350));
    ///
    /// let widgets = vec![Sleepy("a", 10), Sleepy("b", 3_000)];
    /// let outcomes = fan_out.run(&tenant, widgets).await;
    /// assert_eq!(outcomes.iter().map(|o| o.value).collect::<Vec<_>>(), [10, 0]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// Never because of a query's `run`, `load`, `name`, `timeout`, `stale`
    /// or `Drop`: a panic there becomes that query's
    /// [`Failure::Panicked`](crate::Failure::Panicked) (or, in `stale`, no
    /// stale value). But a query that failed, has no stale value, and whose
    /// [`fallback`](crate::DashboardQuery::fallback) panics has no value to
    /// show at all: that panic is logged (ERROR, with the tenant and query)
    /// and resumed from this call: for a tuple once every query has
    /// settled, for a `Vec` as soon as that query settles (the others still
    /// in flight are then dropped, like any cancelled fan-out). A fallback
    /// should be a constant.
    ///
    /// ```
    /// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
    /// use futures_util::FutureExt;
    ///
    /// struct NoFallback;
    ///
    /// impl DashboardQuery for NoFallback {
    ///     type Output = i64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { "broken" }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
    ///         Err(std::io::Error::other("down"))
    ///     }
    ///     fn fallback(&self) -> i64 { panic!("no fallback") }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let (fan_out, tenant) = (FanOut::new(), TenantId::new("t1")?);
    /// let run = fan_out.run(&tenant, (NoFallback,));
    /// assert!(std::panic::AssertUnwindSafe(run).catch_unwind().await.is_err());
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops every query still in flight.
    // Not an `async fn`: the set's own future is returned as it is, so a
    // tuple's queries, held inline in it, are not copied into a second
    // future around it (a cached tuple's state is several kilobytes).
    pub fn run<Q: QuerySet>(
        &self,
        tenant: &TenantId,
        queries: Q,
    ) -> impl Future<Output = Q::Outcomes> + Send {
        let span = tracing::info_span!("fan_out", tenant = %tenant);
        queries.run_set(self, tenant, span, None)
    }

    /// [`run`](Self::run), also returning a [`Report`]: the whole
    /// fan-out's duration and each query's outcome and latency, for a
    /// performance log or page.
    ///
    /// # Examples
    ///
    /// See [`Report`].
    ///
    /// # Panics
    ///
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn run_with_report<Q: QuerySet>(
        &self,
        tenant: &TenantId,
        queries: Q,
    ) -> (Q::Outcomes, Report) {
        let span = tracing::info_span!("fan_out", tenant = %tenant);
        let mut report = None;
        let outcomes = queries.run_set(self, tenant, span, Some(&mut report)).await;
        let report =
            report.unwrap_or_else(|| Report::new(tenant, Duration::ZERO, Vec::new(), None));
        (outcomes, report)
    }

    /// Runs a tenant's dashboard like [`run`](Self::run) and yields each
    /// query's index and [`Outcome`](crate::Outcome) the moment it
    /// settles, fast widgets first: progressive loading, for a page that
    /// paints each widget as it lands (Server-Sent Events, say).
    ///
    /// Takes a slice of one query type; for differently typed widgets chosen
    /// at run time, see `fanout::dynamic` (feature `serde`). Every query is
    /// yielded exactly once, then the stream ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
    /// use futures_util::StreamExt;
    ///
    /// struct Sleepy(&'static str, u64);
    ///
    /// impl DashboardQuery for Sleepy {
    ///     type Output = u64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { self.0 }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<u64, std::io::Error> {
    ///         tokio::time::sleep(Duration::from_millis(self.1)).await;
    ///         Ok(self.1)
    ///     }
    ///     fn fallback(&self) -> u64 { 0 }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let widgets = [Sleepy("slow", 350), Sleepy("fast", 150)];
    /// let tenant = TenantId::new("t1")?;
    /// let mut stream = FanOut::new().run_stream(&tenant, &widgets);
    /// let (index, first) = stream.next().await.unwrap();
    /// assert_eq!((widgets[index].0, first.value), ("fast", 150));
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// As [`run`](Self::run): only a failed query whose `fallback()` panics
    /// panics the stream, when that query's outcome would be yielded.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream drops every query still in flight.
    pub fn run_stream<'a, Q: DashboardQuery>(
        &self,
        tenant: &TenantId,
        queries: &'a [Q],
    ) -> impl Stream<Item = (usize, crate::Outcome<Q::Output>)> + Send + Unpin + use<'a, Q> {
        crate::query_stream::stream(self, tenant, queries)
            .map(|(index, _name, outcome)| (index, outcome))
    }

    /// Runs every future concurrently and yields each one's index and
    /// result as soon as it settles, in completion order: the progressive
    /// form of [`settle`](Self::settle), for painting fast widgets first.
    ///
    /// Same rules as `settle`: timeout, deadline, concurrency limit,
    /// limiter, panic isolation and logging; every input is yielded exactly
    /// once, then the stream ends. The deadline starts when the stream is
    /// first polled.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{FanOut, Settled};
    /// use futures_util::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let inputs = [300_u64, 100, 200].map(|ms| async move {
    ///     tokio::time::sleep(Duration::from_millis(ms)).await;
    ///     Ok::<_, ()>(ms)
    /// });
    /// let order: Vec<(usize, Settled<u64, ()>)> = FanOut::new().stream(inputs).collect().await;
    /// assert_eq!(order, [(1, Settled::Ok(100)), (2, Settled::Ok(200)), (0, Settled::Ok(300))]);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream drops every input still in flight and releases
    /// their limiter permits.
    pub fn stream<I, F, T, E>(
        &self,
        futures: I,
    ) -> impl Stream<Item = (usize, Settled<T, E>)> + Unpin + use<I, F, T, E>
    where
        I: IntoIterator<Item = F>,
        F: Future<Output = Result<T, E>>,
    {
        Drive::new(self, None, futures.into_iter().map(Eager)).map(|ended| {
            log::input_settled(&ended, |_| None);
            (ended.index, ended.settled)
        })
    }

    async fn settle_logged<I, F, T, E>(
        &self,
        futures: I,
        error: impl Fn(&E) -> Option<&dyn Display>,
    ) -> Vec<Settled<T, E>>
    where
        I: IntoIterator<Item = F>,
        F: Future<Output = Result<T, E>>,
    {
        let drive = Drive::new(self, None, futures.into_iter().map(Eager));
        let mut results = InOrder::new(Stream::size_hint(&drive).0);
        let span = tracing::debug_span!("fan_out");
        async {
            let mut drive = drive;
            while let Some(ended) = drive.next().await {
                log::input_settled(&ended, &error);
                results.place(ended.index, ended.settled);
            }
            results.finish(drive.seen())
        }
        .instrument(span)
        .await
    }

    pub(crate) fn per_item_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn whole_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub(crate) fn concurrency_limit(&self) -> Option<NonZeroUsize> {
        self.concurrency
    }

    pub(crate) fn shared_limiter(&self) -> Option<&Limiter> {
        self.limiter.as_ref()
    }
}
