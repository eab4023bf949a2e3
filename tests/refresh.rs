//! Refresh-ahead (`CachePolicy::refresh_after`), in virtual time: no
//! caller waits for a reload once a value exists, one reload per key, a
//! failed reload keeps the old value until its TTL, a hung one never holds
//! a value past it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fanout::cache::{CachePolicy, Cached, QueryCache};
use fanout::{DashboardQuery, Failure, FanOut, Outcome, QueryContext, Source, TenantId};
use tokio::time::{Instant, sleep};

/// What the query does on its next run.
const OK: u64 = 0;
const FAIL: u64 = 1;
const HANG: u64 = 2;

/// A query whose value is the number of its runs so far; it takes
/// `latency`, and fails or hangs when told to.
#[derive(Clone)]
struct Counter {
    runs: Arc<AtomicUsize>,
    mode: Arc<AtomicU64>,
    latency: Duration,
    timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct Down;

impl DashboardQuery for Counter {
    type Output = usize;
    type Error = Down;

    fn name(&self) -> &'static str {
        "counter"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<usize, Down> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        match self.mode.load(Ordering::SeqCst) {
            HANG => std::future::pending().await,
            mode => {
                sleep(self.latency).await;
                if mode == FAIL { Err(Down) } else { Ok(run) }
            }
        }
    }

    fn fallback(&self) -> usize {
        0
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

struct Rig {
    query: Counter,
    cached: Arc<Cached<Counter>>,
    fan_out: FanOut,
    tenant: TenantId,
}

/// TTL 10 s, reloaded from 5 s, stale-if-error 60 s more; the query takes
/// 1 s, with a 3 s timeout.
fn rig() -> Rig {
    let query = Counter {
        runs: Arc::default(),
        mode: Arc::default(),
        latency: secs(1),
        timeout: Some(secs(3)),
    };
    let policy = CachePolicy::ttl(secs(10))
        .refresh_after(secs(5))
        .stale_if_error(secs(60));
    let cached = Arc::new(Cached::new(query.clone(), &QueryCache::new(100), policy));
    Rig {
        query,
        cached,
        fan_out: FanOut::new().deadline(secs(5)),
        tenant: TenantId::new("tenant-a").unwrap(),
    }
}

impl Rig {
    async fn get(&self) -> Outcome<usize> {
        let (outcome,) = self.fan_out.run(&self.tenant, (&*self.cached,)).await;
        outcome
    }

    fn runs(&self) -> usize {
        self.query.runs.load(Ordering::SeqCst)
    }

    fn set(&self, mode: u64) {
        self.query.mode.store(mode, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn once_a_value_exists_no_caller_waits_for_a_reload() {
    let rig = rig();
    let first = rig.get().await;
    assert!(first.is_fresh());
    assert_eq!(first.elapsed, secs(1)); // the only wait: there was no value
    // A caller every 100 ms for a minute: six refresh windows.
    let started = Instant::now();
    let mut refreshing = 0;
    while started.elapsed() < secs(60) {
        let begun = Instant::now();
        let outcome = rig.get().await;
        assert_eq!(begun.elapsed(), Duration::ZERO, "{:?}", outcome.source);
        match outcome.source {
            Source::Cached { age } => assert!(age < secs(5), "{age:?}"),
            Source::Refreshing { age } => {
                assert!(age >= secs(5) && age < secs(10), "{age:?}");
                refreshing += 1;
            }
            other => panic!("{other:?}"),
        }
        sleep(ms(100)).await;
    }
    // A reload every 6 s (due at 5 s, 1 s to run): ten in the minute.
    assert_eq!(rig.runs(), 1 + 10);
    // Ten or eleven calls (at the instant the reload lands, either way)
    // see each 1 s reload.
    assert!((100..=110).contains(&refreshing), "{refreshing}");
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_callers_cause_one_reload() {
    let rig = Arc::new(rig());
    rig.get().await;
    sleep(secs(6)).await; // past the refresh point
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move { rig.get().await })
        })
        .collect();
    for caller in callers {
        let outcome = caller.await.unwrap();
        assert!(matches!(outcome.source, Source::Refreshing { .. }));
        assert_eq!((outcome.value, outcome.elapsed), (1, Duration::ZERO));
    }
    sleep(ms(1_500)).await; // the reload is done
    assert_eq!(rig.runs(), 2);
    let next = rig.get().await;
    assert!(matches!(next.source, Source::Cached { age } if age == ms(500)));
    assert_eq!(next.value, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_reload_keeps_the_value_until_its_ttl_then_stale_if_error() {
    let rig = rig();
    rig.get().await; // value 1, stored at 1 s
    rig.set(FAIL);
    sleep(secs(5)).await; // age 5 s
    let mut seen = Vec::new();
    let begun = Instant::now();
    while begun.elapsed() < ms(4_900) {
        let outcome = rig.get().await;
        assert_eq!(outcome.value, 1);
        assert_eq!(outcome.elapsed, Duration::ZERO, "no caller waits");
        seen.push(outcome.source.label());
        sleep(ms(100)).await;
    }
    assert!(
        seen.iter().all(|s| *s == "cached" || *s == "refreshing"),
        "{seen:?}"
    );
    // One reload a second at most: the first at 5 s, then after each
    // failure (1 s to run) a 1 s pause.
    let reloads = rig.runs() - 1;
    assert!((2..=3).contains(&reloads), "{reloads} reloads in 4.9 s");
    // Past the TTL the query runs (and fails) in front of the caller, who
    // gets the last good value as stale.
    sleep(ms(200)).await;
    let expired = rig.get().await;
    assert!(matches!(
        expired.source,
        Source::Stale {
            cause: Failure::Error(_),
            ..
        }
    ));
    assert_eq!((expired.value, expired.elapsed), (1, secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_reload_never_holds_a_value_past_its_ttl() {
    // No timeout of its own: the reload is bounded by the value's TTL.
    let mut rig = rig();
    rig.query.timeout = None;
    let policy = CachePolicy::ttl(secs(10)).refresh_after(secs(5));
    rig.cached = Arc::new(Cached::new(
        rig.query.clone(),
        &QueryCache::new(100),
        policy,
    ));
    rig.get().await; // stored at 1 s
    rig.set(HANG);
    sleep(secs(5)).await;
    let refreshing = rig.get().await; // starts the hung reload
    assert!(matches!(refreshing.source, Source::Refreshing { .. }));
    sleep(ms(100)).await; // the reload task has started, and hangs
    assert_eq!(rig.runs(), 2);
    rig.set(OK);
    sleep(ms(5_000)).await; // just past the TTL (stored at 1 s, 10 s TTL)
    let begun = Instant::now();
    let after = rig.get().await;
    assert!(after.is_fresh(), "{:?}", after.source);
    // It waited for the hung reload only until its bound (the TTL, plus
    // the shared load's 25 ms grace), then ran the query itself.
    assert!(begun.elapsed() <= ms(25) + secs(1), "{:?}", begun.elapsed());
    assert_eq!(after.value, 3);
}

#[tokio::test(start_paused = true)]
async fn a_reload_slower_than_the_refresh_window_never_serves_past_the_ttl() {
    // Caffeine's first trap: reloads slower than the window between the
    // refresh point and the TTL. The value expires on time anyway.
    let mut rig = rig();
    rig.query.latency = secs(8);
    rig.query.timeout = Some(secs(20));
    let policy = CachePolicy::ttl(secs(10)).refresh_after(secs(5));
    rig.cached = Arc::new(Cached::new(
        rig.query.clone(),
        &QueryCache::new(100),
        policy,
    ));
    rig.fan_out = FanOut::new().deadline(secs(30));
    rig.get().await; // stored at 8 s
    let begun = Instant::now();
    while begun.elapsed() < secs(40) {
        let outcome = rig.get().await;
        if let Source::Cached { age } | Source::Refreshing { age } = outcome.source {
            assert!(age < secs(10), "served {age:?} old");
        }
        sleep(ms(250)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_invalidated_tenant_keeps_nothing_from_a_reload_in_flight() {
    let query = Counter {
        runs: Arc::default(),
        mode: Arc::default(),
        latency: secs(1),
        timeout: Some(secs(3)),
    };
    let cache = QueryCache::new(100);
    let policy = CachePolicy::ttl(secs(10)).refresh_after(secs(5));
    let cached = Cached::new(query.clone(), &cache, policy);
    let tenant = TenantId::new("tenant-a").unwrap();
    let fan_out = FanOut::new();
    fan_out.run(&tenant, (&cached,)).await;
    sleep(secs(5)).await;
    fan_out.run(&tenant, (&cached,)).await; // starts a reload
    cache.invalidate_tenant(&tenant);
    sleep(secs(2)).await; // the reload ended, and stored nothing
    let (after,) = fan_out.run(&tenant, (&cached,)).await;
    assert!(after.is_fresh(), "{:?}", after.source);
    assert_eq!(after.value, 3);
}

/// A query that answers at once with its run count, needing no timer.
struct Instant1(Arc<AtomicUsize>);

impl DashboardQuery for Instant1 {
    type Output = usize;
    type Error = Down;

    fn name(&self) -> &'static str {
        "instant"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<usize, Down> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn fallback(&self) -> usize {
        0
    }
}

#[test]
fn outside_a_tokio_runtime_a_due_value_is_served_as_cached_and_nothing_is_spawned() {
    // No runtime: there is no task to reload on, so a value past its
    // refresh point is served as plain `Cached` (and `tokio::spawn`, which
    // would panic here, is never called).
    use futures_util::FutureExt;
    let runs = Arc::new(AtomicUsize::new(0));
    let policy = CachePolicy::ttl(secs(60)).refresh_after(Duration::ZERO);
    let cached = Cached::new(Instant1(Arc::clone(&runs)), &QueryCache::new(10), policy);
    let (fan_out, tenant) = (FanOut::new(), TenantId::new("tenant-a").unwrap());
    let first = fan_out
        .run(&tenant, (&cached,))
        .now_or_never()
        .expect("ready")
        .0;
    assert!(first.is_fresh());
    let second = fan_out
        .run(&tenant, (&cached,))
        .now_or_never()
        .expect("ready")
        .0;
    assert!(
        matches!(second.source, Source::Cached { .. }),
        "{:?}",
        second.source
    );
    assert_eq!((second.value, runs.load(Ordering::SeqCst)), (1, 1));
}
