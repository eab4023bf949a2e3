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

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use ::metrics::{Counter, Histogram};

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

/// Records one query's outcome and latency through handles resolved the
/// first time this thread saw the (query, outcome): see [`Handles`].
pub(crate) fn query_settled(query: &'static str, outcome: &'static str, elapsed: Duration) {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let recent = handles.current().recent(query, outcome);
        // A `Duration`, converted only by a handle that records.
        recent.duration.record(elapsed);
        recent.outcomes.increment(1);
    });
}

pub(crate) fn fan_out_finished(
    elapsed: Duration,
    longest_wait: Duration,
    queue_length: Option<usize>,
) {
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let fan_out = handles.current().fan_out();
        fan_out.duration.record(elapsed);
        fan_out.queue_wait.record(longest_wait);
        if let Some(length) = queue_length {
            fan_out.queue_length.record(length as f64);
        }
    });
}

thread_local! {
    static HANDLES: RefCell<Handles> = const {
        RefCell::new(Handles {
            recorder: 0,
            recent: [const { None }; RECENT],
            queries: HashMap::with_hasher(BuildHasherDefault::new()),
            fan_out: None,
        })
    };
}

/// This thread's metric handles, resolved once per query name, (query,
/// outcome) and fan-out metric against the recorder in force: building a
/// labelled key and asking the recorder for it costs about a thousand
/// instructions, a registered handle's update a few.
///
/// A handle belongs to the recorder that resolved it, so the table is
/// emptied when another recorder is in force (one installed later, or a
/// `metrics::with_local_recorder` in a test). Recorders are told apart by
/// address: a local recorder created where a dropped one was, on the same
/// thread, would be taken for it.
struct Handles {
    /// The address of the recorder the handles belong to; 0 before any.
    recorder: usize,
    /// The (query, outcome) pairs used last, each in the one entry its
    /// addresses hash to: found with one comparison, before the table.
    recent: [Option<Recent>; RECENT],
    queries: HashMap<NameKey, QueryHandles, BuildHasherDefault<WordHasher>>,
    fan_out: Option<FanOutHandles>,
}

/// How many (query, outcome) pairs [`Handles::recent`] holds, a power of
/// two: room for a service's usual dashboards, with few collisions.
const RECENT: usize = 64;

/// A (query, outcome) pair's handles, by the addresses of the two names.
struct Recent {
    query: (usize, usize),
    outcome: usize,
    duration: Histogram,
    outcomes: Counter,
}

/// A query name by address and length: names are `&'static str`, and two
/// copies of one name at different addresses only cost a second entry
/// with the same handles.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct NameKey(usize, usize);

struct QueryHandles {
    duration: Histogram,
    /// By the address of the outcome's label: a handful at most.
    outcomes: Vec<(usize, Counter)>,
}

struct FanOutHandles {
    duration: Histogram,
    queue_wait: Histogram,
    queue_length: Histogram,
}

impl Handles {
    /// The table, emptied first if the recorder in force changed.
    fn current(&mut self) -> &mut Self {
        let recorder =
            ::metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize);
        if recorder != self.recorder {
            self.recorder = recorder;
            self.recent = [const { None }; RECENT];
            self.queries.clear();
            self.fan_out = None;
        }
        self
    }

    /// The handles of `query` ending as `outcome`.
    fn recent(&mut self, query: &'static str, outcome: &'static str) -> &Recent {
        let key = (query.as_ptr() as usize, query.len());
        let at = outcome.as_ptr() as usize;
        let mut hasher = WordHasher::default();
        hasher.write_usize(key.0 ^ key.1.rotate_left(32));
        hasher.write_usize(at);
        // The hash's top bits pick the one entry this pair may be in.
        let index = (hasher.finish() >> (64 - RECENT.trailing_zeros())) as usize;
        let hit = self.recent[index]
            .as_ref()
            .is_some_and(|r| r.query == key && r.outcome == at);
        if !hit {
            let of_query = self.query(query);
            self.recent[index] = Some(Recent {
                query: key,
                outcome: at,
                duration: of_query.duration.clone(),
                outcomes: of_query.outcome(query, outcome).clone(),
            });
        }
        self.recent[index]
            .as_ref()
            .expect("the entry was just found or filled")
    }

    fn query(&mut self, query: &'static str) -> &mut QueryHandles {
        self.queries
            .entry(NameKey(query.as_ptr() as usize, query.len()))
            .or_insert_with(|| QueryHandles {
                duration: ::metrics::histogram!(QUERY_DURATION, "query" => query),
                outcomes: Vec::new(),
            })
    }

    fn fan_out(&mut self) -> &FanOutHandles {
        self.fan_out.get_or_insert_with(|| FanOutHandles {
            duration: ::metrics::histogram!(FAN_OUT_DURATION),
            queue_wait: ::metrics::histogram!(QUEUE_WAIT),
            queue_length: ::metrics::histogram!(QUEUE_LENGTH),
        })
    }
}

impl QueryHandles {
    fn outcome(&mut self, query: &'static str, outcome: &'static str) -> &Counter {
        let at = outcome.as_ptr() as usize;
        let index = match self.outcomes.iter().position(|(label, _)| *label == at) {
            Some(index) => index,
            None => {
                let counter =
                    ::metrics::counter!(QUERY_OUTCOMES, "query" => query, "outcome" => outcome);
                self.outcomes.push((at, counter));
                self.outcomes.len() - 1
            }
        };
        &self.outcomes[index].1
    }
}

/// Hashes the two words of a [`NameKey`] (Fx-style: a rotate, a xor and a
/// multiply each); SipHash would cost more than the rest of the update.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use ::metrics::{CounterFn, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;

    /// Counts every update, and every handle it was asked for.
    #[derive(Default)]
    struct Counting {
        registered: AtomicU64,
        increments: Arc<AtomicU64>,
        records: Arc<AtomicU64>,
    }

    struct Tally(Arc<AtomicU64>);

    impl CounterFn for Tally {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }

        fn absolute(&self, _value: u64) {}
    }

    impl HistogramFn for Tally {
        fn record(&self, _value: f64) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            self.registered.fetch_add(1, Ordering::Relaxed);
            Counter::from_arc(Arc::new(Tally(Arc::clone(&self.increments))))
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> ::metrics::Gauge {
            ::metrics::Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            self.registered.fetch_add(1, Ordering::Relaxed);
            Histogram::from_arc(Arc::new(Tally(Arc::clone(&self.records))))
        }
    }

    #[test]
    fn handles_are_resolved_once_per_query_and_outcome() {
        let recorder = Counting::default();
        ::metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                query_settled("revenue", "fresh", Duration::from_millis(5));
                query_settled("revenue", "timed_out", Duration::from_millis(5));
                query_settled("arrears", "fresh", Duration::from_millis(5));
                fan_out_finished(Duration::from_millis(9), Duration::ZERO, Some(2));
            }
        });
        // Two durations, three outcome counters, three fan-out histograms.
        assert_eq!(recorder.registered.load(Ordering::Relaxed), 8);
        assert_eq!(recorder.increments.load(Ordering::Relaxed), 9);
        assert_eq!(recorder.records.load(Ordering::Relaxed), 9 + 9);
    }

    #[test]
    fn another_recorder_gets_handles_of_its_own() {
        let (first, second) = (Counting::default(), Counting::default());
        ::metrics::with_local_recorder(&first, || {
            query_settled("revenue", "fresh", Duration::ZERO)
        });
        ::metrics::with_local_recorder(&second, || {
            query_settled("revenue", "fresh", Duration::ZERO)
        });
        for recorder in [&first, &second] {
            assert_eq!(recorder.increments.load(Ordering::Relaxed), 1);
            assert_eq!(recorder.records.load(Ordering::Relaxed), 1);
        }
    }
}
