//! Dashboard metrics through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`): install any recorder (Prometheus, StatsD,
//! ...) and every [`FanOut::run`](crate::FanOut::run) records these.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`QUERY_OUTCOMES`] `fanout_query_outcomes_total` | counter | `query`, `outcome` |
//! | [`QUERY_DURATION`] `fanout_query_duration_seconds` | histogram | `query` |
//! | [`FAN_OUT_DURATION`] `fanout_fan_out_duration_seconds` | histogram | none |
//! | [`QUEUE_WAIT`] `fanout_queue_wait_seconds` | histogram | none |
//! | [`QUEUE_LENGTH`] `fanout_queue_length` | histogram | none |
//! | [`REDIS_DECODE_FAILURES`] `fanout_redis_decode_failures_total` | counter | `query` (feature `redis`) |
//!
//! `outcome` is the [`Source::label`](crate::Source::label) word (`fresh`,
//! `error`, `timed_out`, `deadline_exceeded`, `panicked`,
//! `limiter_closed`, `shed`). No metric is labelled by tenant: a label's every value
//! is a separate time series, and tenants are unbounded, so a tenant label
//! would grow the metrics store with every customer. Per-tenant detail
//! belongs in the logs, which carry `tenant`.
//!
//! # Examples
//!
//! ```
//! assert_eq!(fanout::metrics::QUERY_OUTCOMES, "fanout_query_outcomes_total");
//! ```

use std::time::Duration;

/// Counter of query outcomes, labelled `query` and `outcome`.
///
/// # Examples
///
/// See the [module](self) docs.
pub const QUERY_OUTCOMES: &str = "fanout_query_outcomes_total";

/// Histogram of each query's latency in seconds, labelled `query`.
///
/// # Examples
///
/// See the [module](self) docs.
pub const QUERY_DURATION: &str = "fanout_query_duration_seconds";

/// Histogram of each dashboard fan-out's latency in seconds.
///
/// # Examples
///
/// See the [module](self) docs.
pub const FAN_OUT_DURATION: &str = "fanout_fan_out_duration_seconds";

/// Counter of values read from the Redis shared tier that did not decode as
/// their query's type (each one a miss), labelled `query`; see
/// [`RedisTier::decode_failures`](crate::cache::RedisTier::decode_failures).
///
/// # Examples
///
/// See the [module](self) docs.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const REDIS_DECODE_FAILURES: &str = "fanout_redis_decode_failures_total";

/// Histogram of each dashboard fan-out's longest wait, in seconds, for a
/// limiter's permit (or for a slot under its concurrency limit): from the
/// fan-out's start until its last query started or was given up.
///
/// # Examples
///
/// See the [module](self) docs.
pub const QUEUE_WAIT: &str = "fanout_queue_wait_seconds";

/// Histogram of a [`FairLimiter`](crate::FairLimiter)'s queue length
/// (permits wanted by other fan-outs, not granted yet) when a dashboard
/// fan-out joined its line; fan-outs without a fair limiter record nothing.
///
/// # Examples
///
/// See the [module](self) docs.
pub const QUEUE_LENGTH: &str = "fanout_queue_length";

#[cfg(feature = "redis")]
pub(crate) fn redis_decode_failed(query: &'static str) {
    ::metrics::counter!(REDIS_DECODE_FAILURES, "query" => query).increment(1);
}

pub(crate) fn query_settled(query: &'static str, outcome: &'static str, elapsed: Duration) {
    ::metrics::counter!(QUERY_OUTCOMES, "query" => query, "outcome" => outcome).increment(1);
    ::metrics::histogram!(QUERY_DURATION, "query" => query).record(elapsed.as_secs_f64());
}

pub(crate) fn fan_out_finished(
    elapsed: Duration,
    longest_wait: Duration,
    queue_length: Option<usize>,
) {
    ::metrics::histogram!(FAN_OUT_DURATION).record(elapsed.as_secs_f64());
    ::metrics::histogram!(QUEUE_WAIT).record(longest_wait.as_secs_f64());
    if let Some(length) = queue_length {
        ::metrics::histogram!(QUEUE_LENGTH).record(length as f64);
    }
}
