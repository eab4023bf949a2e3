//! [`Settled`] and the free functions, shorthands for a default [`FanOut`].

use std::future::Future;
use std::time::Duration;

use crate::FanOut;

/// How one input of a fan-out ended: the `Promise.allSettled` result, with
/// the ways an async input can end that a promise cannot.
///
/// Results always come back one per input, in input order.
///
/// # Examples
///
/// ```
/// use fanout::Settled;
///
/// let settled: Settled<u32, String> = Settled::Ok(7);
/// assert!(settled.is_ok());
/// assert_eq!(settled.ok(), Some(7));
///
/// let failed: Settled<u32, String> = Settled::TimedOut;
/// assert_eq!(failed.to_string(), "timed out");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled<T, E> {
    /// The input completed with `Ok`.
    Ok(T),
    /// The input completed with `Err`.
    Err(E),
    /// The input ran past its own timeout and was dropped.
    TimedOut,
    /// The fan-out's overall deadline passed first: the input was dropped
    /// while running, or never started.
    DeadlineExceeded,
    /// The input panicked while being polled; holds the panic message.
    Panicked(String),
    /// The shared [`limiter`](FanOut::limiter) was closed before the input
    /// could get a permit, so it never started.
    LimiterClosed,
    /// A [`FairLimiter`](crate::FairLimiter) shed the input under load: it
    /// could no longer get a permit in time to finish before the deadline,
    /// so it never started.
    Shed,
}

impl<T, E> Settled<T, E> {
    /// Whether the input completed with `Ok`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(fanout::Settled::<u8, ()>::Ok(1).is_ok());
    /// assert!(!fanout::Settled::<u8, ()>::DeadlineExceeded.is_ok());
    /// ```
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok(_))
    }

    /// The success value, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::Settled::<u8, ()>::Ok(1).ok(), Some(1));
    /// assert_eq!(fanout::Settled::<u8, ()>::Err(()).ok(), None);
    /// ```
    pub fn ok(self) -> Option<T> {
        match self {
            Self::Ok(value) => Some(value),
            _ => None,
        }
    }

    /// The error the input returned, if it returned one.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::Settled::<u8, &str>::Err("down").err(), Some("down"));
    /// assert_eq!(fanout::Settled::<u8, &str>::TimedOut.err(), None);
    /// ```
    pub fn err(self) -> Option<E> {
        match self {
            Self::Err(error) => Some(error),
            _ => None,
        }
    }

    /// Maps the success value, keeping every other variant as it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::Settled;
    /// assert_eq!(Settled::<u8, ()>::Ok(2).map(|v| v * 10), Settled::Ok(20));
    /// assert_eq!(Settled::<u8, ()>::TimedOut.map(|v| v * 10), Settled::TimedOut);
    /// ```
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Settled<U, E> {
        match self {
            Self::Ok(value) => Settled::Ok(f(value)),
            Self::Err(error) => Settled::Err(error),
            Self::TimedOut => Settled::TimedOut,
            Self::DeadlineExceeded => Settled::DeadlineExceeded,
            Self::Panicked(message) => Settled::Panicked(message),
            Self::LimiterClosed => Settled::LimiterClosed,
            Self::Shed => Settled::Shed,
        }
    }

    /// A short, stable name for the variant, as used in the `outcome` field
    /// of log events: `ok`, `error`, `timed_out`, `deadline_exceeded`,
    /// `panicked`, `limiter_closed` or `shed`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(fanout::Settled::<u8, ()>::TimedOut.label(), "timed_out");
    /// ```
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok(_) => "ok",
            Self::Err(_) => "error",
            Self::TimedOut => "timed_out",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Panicked(_) => "panicked",
            Self::LimiterClosed => "limiter_closed",
            Self::Shed => "shed",
        }
    }
}

/// Describes how the input ended without its value: `ok`, `error`,
/// `timed out`, `deadline exceeded`, `panicked: MESSAGE`, `limiter closed`,
/// `shed`.
impl<T, E> std::fmt::Display for Settled<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok(_) => f.write_str("ok"),
            Self::Err(_) => f.write_str("error"),
            Self::TimedOut => f.write_str("timed out"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
            Self::LimiterClosed => f.write_str("limiter closed"),
            Self::Shed => f.write_str("shed"),
        }
    }
}

/// Runs every future concurrently and reports how each one ended, in input
/// order; each is dropped once it runs `timeout` past its start.
///
/// The shorthand for [`FanOut::new().timeout(timeout).settle(futures)`](FanOut::settle):
/// see there for the full behaviour. The futures are polled inside the
/// calling task, so they may borrow (no `'static` bound, no spawning).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{join_all_settled_with_timeout, Settled};
/// use futures_util::future::BoxFuture;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let inputs: Vec<BoxFuture<'_, Result<u32, &str>>> = vec![
///     Box::pin(async { Ok(1) }),
///     Box::pin(async { Err("no rows") }),
///     Box::pin(async {
///         tokio::time::sleep(Duration::from_secs(10)).await;
///         Ok(3)
///     }),
/// ];
/// let settled = join_all_settled_with_timeout(inputs, Duration::from_secs(2)).await;
/// assert_eq!(settled, [Settled::Ok(1), Settled::Err("no rows"), Settled::TimedOut]);
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the returned future drops every input still in flight.
pub async fn join_all_settled_with_timeout<I, F, T, E>(
    futures: I,
    timeout: Duration,
) -> Vec<Settled<T, E>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    FanOut::new().timeout(timeout).settle(futures).await
}

/// Runs every future concurrently and returns its value, or the paired
/// fallback value when it fails; every failure is logged with its index and
/// error.
///
/// The shorthand for [`FanOut::new().with_defaults(pairs)`](FanOut::with_defaults).
/// Inputs come as `(future, fallback)` pairs, so the two can never be out of
/// step. There is no timeout: use [`FanOut::timeout`] and
/// [`FanOut::with_defaults`] for one.
///
/// # Examples
///
/// ```
/// use fanout::join_all_with_defaults;
/// use futures_util::future::BoxFuture;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let revenue: BoxFuture<'_, Result<i64, String>> = Box::pin(async { Ok(125_000) });
/// let arrears: BoxFuture<'_, Result<i64, String>> = Box::pin(async { Err("connection reset".to_string()) });
///
/// let values = join_all_with_defaults([(revenue, 0), (arrears, -1)]).await;
/// assert_eq!(values, [125_000, -1]);
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the returned future drops every input still in flight.
pub async fn join_all_with_defaults<I, F, T, E>(pairs: I) -> Vec<T>
where
    I: IntoIterator<Item = (F, T)>,
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    FanOut::new().with_defaults(pairs).await
}
