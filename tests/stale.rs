//! Stale lookups (`DashboardQuery::stale`) run inside the fan-out, under its
//! timers: every lookup ends by the deadline and by its own query's
//! timeout, lookups of different queries run together, and queries still in
//! flight keep being polled while a lookup is pending.

use std::time::Duration;

use fanout::{DashboardQuery, Failure, FanOut, QueryContext, Source, TenantId};
use futures_util::StreamExt;
use tokio::time::{Instant, sleep};

/// A query that fails (or succeeds) after `run_ms`, whose stale lookup
/// answers after `stale_ms` (`None`: never).
struct Lagging {
    name: &'static str,
    run_ms: u64,
    fails: bool,
    stale_ms: Option<u64>,
    timeout: Option<Duration>,
}

fn lagging(name: &'static str, run_ms: u64, stale_ms: Option<u64>) -> Lagging {
    Lagging {
        name,
        run_ms,
        fails: true,
        stale_ms,
        timeout: None,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct Unavailable;

impl DashboardQuery for Lagging {
    type Output = i64;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, _ctx: QueryContext) -> Result<i64, Unavailable> {
        sleep(Duration::from_millis(self.run_ms)).await;
        if self.fails { Err(Unavailable) } else { Ok(1) }
    }

    fn fallback(&self) -> i64 {
        0
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    async fn stale(&self, _tenant: &TenantId) -> Option<(i64, Duration)> {
        match self.stale_ms {
            Some(ms) => {
                sleep(Duration::from_millis(ms)).await;
                Some((41, Duration::from_secs(60)))
            }
            None => std::future::pending().await,
        }
    }
}

fn tenant() -> TenantId {
    TenantId::new("t1").unwrap()
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn slow_lookups_end_at_the_deadline_in_the_tuple_path() {
    // Before: the lookups ran after the engine, one after the other, with
    // no limit: this dashboard took 20 s.
    let fan_out = FanOut::new().deadline(Duration::from_secs(1));
    let started = Instant::now();
    let (a, b) = fan_out
        .run(
            &tenant(),
            (
                lagging("a", 100, Some(10_000)),
                lagging("b", 100, Some(10_000)),
            ),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    for outcome in [&a, &b] {
        assert_eq!(outcome.value, 0);
        // The cause is the query's own failure; the lookup found nothing in
        // time.
        assert!(matches!(
            outcome.source,
            Source::Fallback(Failure::Error(_))
        ));
        assert_eq!(outcome.elapsed, ms(100));
    }
}

#[tokio::test(start_paused = true)]
async fn a_lookup_that_never_answers_cannot_hang_the_dashboard() {
    let fan_out = FanOut::new().deadline(Duration::from_secs(1));
    let started = Instant::now();
    let outcomes = fan_out
        .run(
            &tenant(),
            vec![lagging("a", 100, None), lagging("b", 200, None)],
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(outcomes.iter().all(|o| o.value == 0 && o.is_degraded()));
}

#[tokio::test(start_paused = true)]
async fn lookups_of_different_queries_run_together() {
    let fan_out = FanOut::new().deadline(Duration::from_secs(3));
    let started = Instant::now();
    let (a, b, c) = fan_out
        .run(
            &tenant(),
            (
                lagging("a", 100, Some(300)),
                lagging("b", 100, Some(300)),
                lagging("c", 100, Some(300)),
            ),
        )
        .await;
    // 100 ms of query, then three 300 ms lookups at once: 400 ms, not 1 s.
    assert_eq!(started.elapsed(), ms(400));
    for outcome in [&a, &b, &c] {
        assert_eq!(outcome.value, 41);
        assert!(matches!(
            outcome.source,
            Source::Stale {
                cause: Failure::Error(_),
                ..
            }
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn queries_in_flight_keep_running_while_a_lookup_is_pending() {
    // Before: the stream stopped polling the engine while a lookup was
    // pending, so `fast` was held back behind `failing`'s 500 ms lookup.
    let widgets = vec![
        lagging("failing", 100, Some(500)),
        Lagging {
            fails: false,
            ..lagging("fast", 200, None)
        },
    ];
    let fan_out = FanOut::new().deadline(Duration::from_secs(3));
    let started = Instant::now();
    let mut stream = fan_out.run_stream(&tenant(), &widgets);
    let (index, first) = stream.next().await.unwrap();
    assert_eq!((widgets[index].name, first.value), ("fast", 1));
    assert_eq!(started.elapsed(), ms(200));
    let (index, second) = stream.next().await.unwrap();
    assert_eq!((widgets[index].name, second.value), ("failing", 41));
    assert_eq!(started.elapsed(), ms(600));
    assert!(stream.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_querys_own_timeout_bounds_its_lookup() {
    // Fails at 900 ms; its lookup would take 500 ms more, past its 1 s
    // timeout, which bounds the query and its lookup alike.
    let query = Lagging {
        timeout: Some(Duration::from_secs(1)),
        ..lagging("a", 900, Some(500))
    };
    let started = Instant::now();
    let (a,) = FanOut::new().run(&tenant(), (query,)).await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(matches!(a.source, Source::Fallback(Failure::Error(_))));

    // The same lookup in time: stale.
    let query = Lagging {
        timeout: Some(Duration::from_secs(1)),
        ..lagging("a", 400, Some(500))
    };
    let (a,) = FanOut::new().run(&tenant(), (query,)).await;
    assert_eq!(a.value, 41);
}

#[tokio::test(start_paused = true)]
async fn a_ready_lookup_is_used_even_at_the_deadline_instant() {
    // Cut at the deadline, the query still gets its lookup polled once: an
    // in-process cache answers at once, so the page shows its last value.
    let fan_out = FanOut::new().deadline(Duration::from_secs(1));
    let (tuple,) = fan_out
        .run(&tenant(), (lagging("hangs", 5_000, Some(0)),))
        .await;
    assert_eq!(tuple.value, 41);
    assert!(matches!(
        tuple.source,
        Source::Stale {
            cause: Failure::DeadlineExceeded,
            ..
        }
    ));
    let slice = fan_out
        .run(&tenant(), vec![lagging("hangs", 5_000, Some(0))])
        .await;
    assert_eq!(slice[0].value, 41);

    // The same at its own timeout.
    let query = Lagging {
        timeout: Some(ms(500)),
        ..lagging("hangs", 5_000, Some(0))
    };
    let (timed_out,) = FanOut::new().run(&tenant(), (query,)).await;
    assert!(matches!(
        timed_out.source,
        Source::Stale {
            cause: Failure::TimedOut,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn queries_never_started_by_the_deadline_get_their_lookup_too() {
    // Sequential: the second query never starts; its ready lookup is still
    // consulted at the deadline.
    let fan_out = FanOut::new().deadline(Duration::from_secs(1)).sequential();
    let started = Instant::now();
    let (first, second) = fan_out
        .run(
            &tenant(),
            (
                lagging("slow", 5_000, Some(0)),
                lagging("waiting", 100, Some(0)),
            ),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(matches!(
        first.source,
        Source::Stale {
            cause: Failure::DeadlineExceeded,
            ..
        }
    ));
    assert!(matches!(
        second.source,
        Source::Stale {
            cause: Failure::DeadlineExceeded,
            ..
        }
    ));
    assert_eq!(second.elapsed, Duration::ZERO);
}
