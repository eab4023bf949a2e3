//! [`Outcome`], [`Source`] and [`Failure`]: what a dashboard query produced
//! and where the value came from.

use std::time::Duration;

/// The error type a failed query's error is boxed into.
///
/// # Examples
///
/// ```
/// let error: fanout::BoxError = "connection reset".into();
/// assert_eq!(fanout::Failure::Error(error).to_string(), "error: connection reset");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One query's result in a dashboard: the value to show, where it came from
/// and how long the query ran.
///
/// A dashboard always gets a value for every widget: either the query's own
/// ([`Source::Fresh`]) or its [`fallback`](crate::DashboardQuery::fallback)
/// with the reason ([`Source::Fallback`]).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
///
/// struct ChildCount;
///
/// impl DashboardQuery for ChildCount {
///     type Output = u32;
///     type Error = std::io::Error;
///     fn name(&self) -> &'static str { "child_count" }
///     async fn run(&self, _ctx: QueryContext) -> Result<u32, std::io::Error> { Ok(42) }
///     fn fallback(&self) -> u32 { 0 }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let tenant = TenantId::new("creche-1")?;
/// let (children,) = FanOut::new().run(&tenant, (ChildCount,)).await;
/// assert!(children.is_fresh());
/// assert_eq!(children.value, 42);
/// assert_eq!(children.elapsed, Duration::ZERO); // ready at once; the clock is paused
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Outcome<T> {
    /// The value to show: the query's own, or its fallback.
    pub value: T,
    /// Where `value` came from.
    pub source: Source,
    /// How long the query ran, from its start to its end (zero when it never
    /// started).
    pub elapsed: Duration,
    /// How long it waited, from the fan-out's start, before it started (for
    /// a limiter's permit or a slot under the concurrency limit), or before
    /// it was given up when it never started.
    pub waited: Duration,
}

impl<T> Outcome<T> {
    pub(crate) fn new(value: T, source: Source, elapsed: Duration, waited: Duration) -> Self {
        Self {
            value,
            source,
            elapsed,
            waited,
        }
    }

    /// Whether the value is the query's own.
    ///
    /// # Examples
    ///
    /// See [`Outcome`].
    pub fn is_fresh(&self) -> bool {
        self.source.is_fresh()
    }

    /// Whether the value is a stand-in: a stale value or the fallback, shown
    /// because the query failed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
    /// struct Broken;
    ///
    /// impl DashboardQuery for Broken {
    ///     type Output = i64;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { "outstanding" }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
    ///         Err(std::io::Error::other("relation \"invoices\" does not exist"))
    ///     }
    ///     fn fallback(&self) -> i64 { 0 }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let (outstanding,) = FanOut::new().run(&TenantId::new("t1")?, (Broken,)).await;
    /// assert!(outstanding.is_degraded());
    /// assert_eq!(outstanding.value, 0);
    /// assert_eq!(
    ///     outstanding.source.to_string(),
    ///     "fallback (error: relation \"invoices\" does not exist)",
    /// );
    /// # Ok(()) }
    /// ```
    pub fn is_degraded(&self) -> bool {
        self.source.is_degraded()
    }

    /// Why the query failed, if it did (the value is then stale or the
    /// fallback).
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{DashboardQuery, FanOut, QueryContext, TenantId, Failure};
    /// # use std::time::Duration;
    /// struct Hangs;
    ///
    /// impl DashboardQuery for Hangs {
    ///     type Output = u32;
    ///     type Error = std::io::Error;
    ///     fn name(&self) -> &'static str { "arrears" }
    ///     async fn run(&self, _ctx: QueryContext) -> Result<u32, std::io::Error> {
    ///         std::future::pending().await
    ///     }
    ///     fn fallback(&self) -> u32 { 0 }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), fanout::InvalidTenantId> {
    /// let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    /// let (arrears,) = fan_out.run(&TenantId::new("t1")?, (Hangs,)).await;
    /// assert!(matches!(arrears.failure(), Some(Failure::TimedOut)));
    /// assert_eq!(arrears.elapsed, Duration::from_secs(2));
    /// # Ok(()) }
    /// ```
    pub fn failure(&self) -> Option<&Failure> {
        match &self.source {
            Source::Fallback(failure) | Source::Stale { cause: failure, .. } => Some(failure),
            Source::Fresh | Source::Cached { .. } | Source::Refreshing { .. } => None,
        }
    }

    /// The value, whatever its source.
    ///
    /// # Examples
    ///
    /// See [`Outcome`]; `outcome.into_value()` is `outcome.value`.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// Where an [`Outcome`]'s value came from.
///
/// # Examples
///
/// ```
/// use fanout::{Failure, Source};
///
/// assert_eq!(Source::Fresh.to_string(), "fresh");
/// assert_eq!(Source::Fallback(Failure::TimedOut).to_string(), "fallback (timed out)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    /// The query ran and returned this value.
    Fresh,
    /// The value came from a cache, computed `age` ago and still within its
    /// time to live.
    Cached {
        /// How long ago the value was computed.
        age: Duration,
    },
    /// The value came from a cache, computed `age` ago and still within its
    /// time to live, but past its refresh point: a reload is replacing it in
    /// the background
    /// ([`CachePolicy::refresh_after`](crate::cache::CachePolicy::refresh_after)).
    Refreshing {
        /// How long ago the value was computed.
        age: Duration,
    },
    /// The query failed; the value is its last good one, computed `age` ago
    /// (stale-if-error).
    Stale {
        /// How long ago the value was computed.
        age: Duration,
        /// Why the query failed.
        cause: Failure,
    },
    /// The query failed and no usable cached value exists; the value is its
    /// fallback.
    Fallback(Failure),
}

impl Source {
    /// Whether the value is the query's own.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(fanout::Source::Fresh.is_fresh());
    /// ```
    pub fn is_fresh(&self) -> bool {
        matches!(self, Self::Fresh)
    }

    /// Whether the value stands in for a failed query: stale or the
    /// fallback.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use fanout::{Failure, Source};
    /// assert!(!Source::Cached { age: Duration::from_secs(1) }.is_degraded());
    /// assert!(Source::Fallback(Failure::TimedOut).is_degraded());
    /// ```
    pub fn is_degraded(&self) -> bool {
        matches!(self, Self::Stale { .. } | Self::Fallback(_))
    }

    /// A short, stable name for the source, as used in the `outcome` field
    /// of log events and metrics: `fresh`, `cached`, `refreshing`, `stale`,
    /// or for a fallback the failure's [`label`](Failure::label).
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::{Failure, Source};
    /// assert_eq!(Source::Fallback(Failure::DeadlineExceeded).label(), "deadline_exceeded");
    /// ```
    pub fn label(&self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Cached { .. } => "cached",
            Self::Refreshing { .. } => "refreshing",
            Self::Stale { .. } => "stale",
            Self::Fallback(failure) => failure.label(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fresh => f.write_str("fresh"),
            Self::Cached { age } => write!(f, "cached ({:.1} s old)", age.as_secs_f64()),
            Self::Refreshing { age } => {
                write!(f, "cached ({:.1} s old, refreshing)", age.as_secs_f64())
            }
            Self::Stale { age, cause } => {
                write!(f, "stale ({:.1} s old; {cause})", age.as_secs_f64())
            }
            Self::Fallback(failure) => write!(f, "fallback ({failure})"),
        }
    }
}

/// Why a query's value is its fallback.
///
/// # Examples
///
/// ```
/// use fanout::Failure;
///
/// let failure = Failure::Error("connection refused".into());
/// assert_eq!(failure.to_string(), "error: connection refused");
/// assert_eq!(failure.label(), "error");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The query returned an error.
    #[error("error: {0}")]
    Error(#[source] BoxError),
    /// The query ran past its timeout and was dropped.
    #[error("timed out")]
    TimedOut,
    /// The fan-out's deadline passed while the query ran, or before it
    /// started.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The query panicked; holds the panic message.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The shared limiter was closed before the query got a permit.
    #[error("limiter closed")]
    LimiterClosed,
    /// A [`FairLimiter`](crate::FairLimiter) shed the query under load: it
    /// could not get a permit in time to finish before the deadline, so it
    /// never started.
    #[error("shed under load")]
    Shed,
}

impl Failure {
    /// A short, stable name for the failure: `error`, `timed_out`,
    /// `deadline_exceeded`, `panicked`, `limiter_closed` or `shed`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::Failure::Panicked("boom".into()).label(), "panicked");
    /// ```
    pub fn label(&self) -> &'static str {
        match self {
            Self::Error(_) => "error",
            Self::TimedOut => "timed_out",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Panicked(_) => "panicked",
            Self::LimiterClosed => "limiter_closed",
            Self::Shed => "shed",
        }
    }
}
