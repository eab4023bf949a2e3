//! Fair admission between tenants and load shedding (`FairLimiter`), in
//! virtual time: each test's instants are exact.

mod support;

use std::future::Future;
use std::num::{NonZeroU32, NonZeroUsize};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::{
    DashboardQuery, Failure, FairLimiter, FanOut, Outcome, QueryContext, Settled, Source, TenantId,
};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

type Starts = Arc<Mutex<Vec<(String, Duration)>>>;

/// A query that notes its tenant and start (from `origin`), then sleeps.
#[derive(Clone)]
struct Timed {
    ms: u64,
    origin: Instant,
    starts: Starts,
    panics: bool,
}

impl DashboardQuery for Timed {
    type Output = u64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "timed"
    }

    async fn run(&self, ctx: QueryContext) -> Result<u64, std::io::Error> {
        let at = self.origin.elapsed();
        self.starts
            .lock()
            .unwrap()
            .push((ctx.tenant().to_string(), at));
        sleep(Duration::from_millis(self.ms)).await;
        assert!(!self.panics, "query exploded");
        Ok(self.ms)
    }

    fn fallback(&self) -> u64 {
        0
    }
}

struct Rig {
    origin: Instant,
    starts: Starts,
}

impl Rig {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            starts: Arc::default(),
        }
    }

    fn query(&self, ms: u64) -> Timed {
        Timed {
            ms,
            origin: self.origin,
            starts: Arc::clone(&self.starts),
            panics: false,
        }
    }

    fn dashboard(&self, ms: u64, size: usize) -> Vec<Timed> {
        vec![self.query(ms); size]
    }

    /// When `tenant`'s queries started, from the rig's origin.
    fn starts_of(&self, tenant: &str) -> Vec<Duration> {
        let starts = self.starts.lock().unwrap();
        starts
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, at)| *at)
            .collect()
    }
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn spawn_dashboard(
    fan_out: &FanOut,
    tenant_id: &str,
    queries: Vec<Timed>,
) -> tokio::task::JoinHandle<Vec<Outcome<u64>>> {
    let fan_out = fan_out.clone();
    let tenant = tenant(tenant_id);
    tokio::spawn(async move { fan_out.run(&tenant, queries).await })
}

/// Tenant A opens 100 six-query dashboards at once, then B opens one: how
/// long after arriving each of B's queries started, under `fan_out`.
async fn quiet_tenant_waits(fan_out: FanOut) -> Vec<Duration> {
    let rig = Rig::new();
    let flood: Vec<_> = (0..100)
        .map(|_| spawn_dashboard(&fan_out, "tenant-a", rig.dashboard(100, 6)))
        .collect();
    sleep(ms(1)).await;
    let arrived = rig.origin.elapsed();
    let quiet = spawn_dashboard(&fan_out, "tenant-b", rig.dashboard(100, 6));
    let outcomes = quiet.await.unwrap();
    assert!(outcomes.iter().all(Outcome::is_fresh));
    for dashboard in flood {
        dashboard.await.unwrap();
    }
    let mut b: Vec<_> = rig
        .starts_of("tenant-b")
        .into_iter()
        .map(|at| at - arrived)
        .collect();
    b.sort();
    b
}

#[tokio::test(start_paused = true)]
async fn a_flooding_tenant_does_not_hold_up_another() {
    // Fair: when A's first round ends, one query-duration after B
    // arrived, B takes permits until it holds as many as A: five of the
    // ten. Its sixth query comes at the next round (at five each, A was
    // served least recently).
    let fair = quiet_tenant_waits(FanOut::new().fair_limiter(FairLimiter::new(10))).await;
    assert_eq!(fair, [99, 99, 99, 99, 99, 199].map(ms));
    // The FIFO semaphore, for contrast: each of B's queries queues behind
    // the A queries that came before it, so B's dashboard ends behind A's
    // whole backlog (600 queries over 10 permits of 100 ms: 6 s).
    let fifo = quiet_tenant_waits(FanOut::new().limiter(Arc::new(Semaphore::new(10)))).await;
    assert_eq!(fifo, [999, 1_999, 2_999, 3_999, 4_999, 5_999].map(ms));
}

#[tokio::test(start_paused = true)]
async fn a_lone_tenant_uses_every_permit() {
    let rig = Rig::new();
    let limiter = FairLimiter::new(10);
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let outcomes = fan_out
        .run(&tenant("tenant-a"), rig.dashboard(100, 25))
        .await;
    assert!(outcomes.iter().all(Outcome::is_fresh));
    // 25 queries over 10 permits: three rounds, the first two full.
    let starts = rig.starts_of("tenant-a");
    assert_eq!(starts.iter().filter(|&&at| at == ms(0)).count(), 10);
    assert_eq!(starts.iter().filter(|&&at| at == ms(100)).count(), 10);
    assert_eq!(starts.iter().filter(|&&at| at == ms(200)).count(), 5);
    assert_eq!(rig.origin.elapsed(), ms(300));
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (10, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn within_a_tenant_dashboards_are_served_in_arrival_order() {
    // Two permits; three dashboards of four queries each, in a row. The
    // first gets every permit until it has started all four, then the
    // second: the first finishes first, not all three at the end.
    let rig = Rig::new();
    let fan_out = FanOut::new().fair_limiter(FairLimiter::new(2));
    let mut ends = Vec::new();
    let dashboards: Vec<_> = (0..3)
        .map(|_| spawn_dashboard(&fan_out, "tenant-a", rig.dashboard(100, 4)))
        .collect();
    for dashboard in dashboards {
        dashboard.await.unwrap();
        ends.push(rig.origin.elapsed());
    }
    // Each dashboard needs two rounds of 100 ms.
    let mut starts = rig.starts_of("tenant-a");
    starts.sort();
    assert_eq!(
        starts,
        [0, 0, 100, 100, 200, 200, 300, 300, 400, 400, 500, 500].map(ms)
    );
    assert_eq!(ends, [ms(200), ms(400), ms(600)]);
}

#[tokio::test(start_paused = true)]
async fn tenants_holding_as_many_take_turns() {
    // One permit, three tenants with backlogs: the permit goes round, in
    // the order they began to wait (A was served before B and C came, so
    // it is first in the round again).
    let rig = Rig::new();
    let fan_out = FanOut::new().fair_limiter(FairLimiter::new(1));
    let mut handles = Vec::new();
    for id in ["tenant-a", "tenant-b", "tenant-c"] {
        handles.push(spawn_dashboard(&fan_out, id, rig.dashboard(10, 4)));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let order: Vec<String> = rig
        .starts
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    let expected =
        ["a", "a", "b", "c", "a", "b", "c", "a", "b", "c", "b", "c"].map(|t| format!("tenant-{t}"));
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_of_weight_two_gets_twice_the_share() {
    let rig = Rig::new();
    let limiter = FairLimiter::new(6).tenant_weights(|t| {
        NonZeroU32::new(if t.as_str() == "tenant-heavy" { 2 } else { 1 }).unwrap()
    });
    let fan_out = FanOut::new().fair_limiter(limiter);
    let heavy = spawn_dashboard(&fan_out, "tenant-heavy", rig.dashboard(100, 40));
    let light = spawn_dashboard(&fan_out, "tenant-light", rig.dashboard(100, 40));
    heavy.await.unwrap();
    light.await.unwrap();
    // While both wait, each round of six permits splits four to two.
    let in_round = |t: &str, at: u64| rig.starts_of(t).iter().filter(|&&s| s == ms(at)).count();
    for round in [100, 200, 300, 400] {
        assert_eq!(
            (
                in_round("tenant-heavy", round),
                in_round("tenant-light", round)
            ),
            (4, 2)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_capped_tenant_leaves_permits_free() {
    let rig = Rig::new();
    let limiter = FairLimiter::new(10).tenant_cap(NonZeroUsize::new(3).unwrap());
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let dashboard = spawn_dashboard(&fan_out, "tenant-a", rig.dashboard(100, 6));
    sleep(ms(50)).await;
    assert_eq!(limiter.available(), 7); // capped at 3, though 10 are free
    dashboard.await.unwrap();
    let starts = rig.starts_of("tenant-a");
    assert_eq!(starts, [0, 0, 0, 100, 100, 100].map(ms));
}

/// A fan-out of its own holding one of `limiter`'s permits for `hold`,
/// started before this returns.
async fn hog(limiter: &FairLimiter, hold: Duration) -> tokio::task::JoinHandle<()> {
    let busy = FanOut::new().fair_limiter(limiter.clone());
    let hog = tokio::spawn(async move {
        let settled = busy.settle([sleep(hold).map(Ok::<(), ()>)]).await;
        assert_eq!(settled, [Settled::Ok(())]);
    });
    tokio::task::yield_now().await;
    hog
}

/// Teaches `limiter` that a query holds a permit for `hold`.
async fn warm(limiter: &FairLimiter, hold: Duration) {
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    fan_out
        .settle([async {
            sleep(hold).await;
            Ok::<_, ()>(())
        }])
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_query_that_could_not_finish_in_time_is_shed_at_once() {
    let rig = Rig::new();
    let limiter = FairLimiter::new(1);
    warm(&limiter, ms(100)).await;
    let hog = hog(&limiter, ms(1_000)).await;
    // Due in 500 ms; queries take 100 ms: it must start by 400 ms, and the
    // only permit is busy until 1 s. It waits until 400 ms, then degrades.
    let fan_out = FanOut::new()
        .deadline(ms(500))
        .fair_limiter(limiter.clone());
    let started = Instant::now();
    let (outcomes, report) = fan_out
        .run_with_report(&tenant("tenant-b"), rig.dashboard(100, 3))
        .await;
    assert_eq!(started.elapsed(), ms(400));
    for outcome in &outcomes {
        assert!(matches!(outcome.source, Source::Fallback(Failure::Shed)));
        assert_eq!(
            (outcome.value, outcome.elapsed, outcome.waited),
            (0, ms(0), ms(400))
        );
    }
    assert_eq!((report.shed(), report.longest_wait()), (3, ms(400)));
    assert_eq!(report.queue_length, Some(0));
    assert!(rig.starts_of("tenant-b").is_empty(), "nothing started");
    assert_eq!(limiter.queued(), 0, "it left the line");
    hog.await.unwrap();
    assert_eq!((limiter.available(), limiter.tenants()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn without_a_measured_hold_a_waiter_leaves_at_the_deadline() {
    // Nothing has run yet, so nothing says how long a query takes: the
    // query waits until the deadline itself and is cut there.
    let limiter = FairLimiter::new(1);
    let hog = hog(&limiter, ms(1_000)).await;
    let fan_out = FanOut::new()
        .deadline(ms(500))
        .fair_limiter(limiter.clone());
    let started = Instant::now();
    let settled = fan_out.settle([async { Ok::<_, ()>(1) }]).await;
    assert_eq!(settled, [Settled::DeadlineExceeded]);
    assert_eq!(started.elapsed(), ms(500));
    assert_eq!(limiter.queued(), 0);
    hog.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn under_a_backlog_nothing_starts_that_could_not_finish() {
    // Two permits, queries of 100 ms, twenty dashboards of six due in
    // 500 ms: ten queries fit. Every query either started in time and is
    // fresh, or never started and degraded no later than its deadline.
    let limiter = FairLimiter::new(2);
    warm(&limiter, ms(100)).await;
    let rig = Rig::new();
    let fan_out = FanOut::new()
        .deadline(ms(500))
        .fair_limiter(limiter.clone());
    let dashboards: Vec<_> = (0..20)
        .map(|_| spawn_dashboard(&fan_out, "tenant-a", rig.dashboard(100, 6)))
        .collect();
    let mut fresh = 0;
    for dashboard in dashboards {
        for outcome in dashboard.await.unwrap() {
            match &outcome.source {
                Source::Fresh => fresh += 1,
                Source::Fallback(Failure::Shed) => {
                    assert_eq!(outcome.elapsed, ms(0));
                    assert!(outcome.waited <= ms(400), "{:?}", outcome.waited);
                }
                other => panic!("a started query was cut: {other:?}"),
            }
        }
    }
    let starts = rig.starts_of("tenant-a");
    assert_eq!(fresh, starts.len());
    assert!(
        starts.iter().all(|&at| at + ms(100) <= ms(500)),
        "{starts:?}"
    );
    assert_eq!(fresh, 10);
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (2, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_sheds_newcomers_after_the_target() {
    // One permit, queries of 100 ms, a steady stream of dashboards: the
    // queue never empties. After `interval`, a newcomer waits at most
    // `target` for its first permit, then degrades.
    let rig = Rig::new();
    let limiter = FairLimiter::new(1).standing_queue(ms(20), ms(250));
    let fan_out = FanOut::new()
        .deadline(ms(3_000))
        .fair_limiter(limiter.clone());
    // A dashboard every 10 ms, ten times what one permit serves.
    let feeder = {
        let (fan_out, rig) = (
            fan_out.clone(),
            Rig {
                origin: rig.origin,
                starts: Arc::clone(&rig.starts),
            },
        );
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for n in 0..60 {
                handles.push(spawn_dashboard(
                    &fan_out,
                    &format!("tenant-{}", n % 7),
                    rig.dashboard(100, 1),
                ));
                sleep(ms(10)).await;
            }
            handles
        })
    };
    sleep(ms(300)).await; // the queue has not emptied for 300 ms
    let started = Instant::now();
    let (outcomes, report) = fan_out
        .run_with_report(&tenant("tenant-late"), rig.dashboard(100, 2))
        .await;
    assert_eq!(started.elapsed(), ms(20));
    assert_eq!(report.shed(), 2);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o.source, Source::Fallback(Failure::Shed)))
    );
    // No dashboard waited longer than `interval`; once the queue stood,
    // newcomers were shed after `target`.
    let (mut served, mut shed_fast) = (0, 0);
    for handle in feeder.await.unwrap() {
        for outcome in handle.await.unwrap() {
            assert!(outcome.waited <= ms(250), "{:?}", outcome.waited);
            served += usize::from(outcome.is_fresh());
            shed_fast += usize::from(!outcome.is_fresh() && outcome.waited == ms(20));
        }
    }
    assert_eq!(served, rig.starts.lock().unwrap().len());
    assert!(
        served >= 6 && shed_fast >= 30,
        "served {served}, shed after the target {shed_fast}"
    );
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (1, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn an_admitted_dashboard_is_not_cut_by_the_standing_queue_rule() {
    // The rule bounds the wait for a first permit only: a dashboard that
    // started keeps its place for the rest.
    let rig = Rig::new();
    let limiter = FairLimiter::new(1).standing_queue(ms(20), ms(50));
    let fan_out = FanOut::new().deadline(ms(3_000)).fair_limiter(limiter);
    let outcomes = fan_out
        .run(&tenant("tenant-a"), rig.dashboard(100, 5))
        .await;
    assert!(outcomes.iter().all(Outcome::is_fresh));
    assert_eq!(rig.origin.elapsed(), ms(500));
}

#[tokio::test(start_paused = true)]
async fn a_closed_limiter_refuses_waiters_and_newcomers() {
    let limiter = FairLimiter::new(1);
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let first = fan_out.clone();
    let running = tokio::spawn(async move {
        first
            .stream([1_000, 0].map(|wait| async move {
                sleep(ms(wait)).await;
                Ok::<_, ()>(wait)
            }))
            .map(|(index, settled)| (index, settled, Instant::now()))
            .collect::<Vec<_>>()
            .await
    });
    tokio::task::yield_now().await;
    let closed_at = Instant::now();
    limiter.close();
    let ended = running.await.unwrap();
    // The waiter is refused the moment the limiter closes, not when the
    // running query frees its permit a second later.
    assert_eq!(ended[0], (1, Settled::LimiterClosed, closed_at));
    assert_eq!(ended[1], (0, Settled::Ok(1_000), closed_at + ms(1_000)));
    let later = fan_out.settle([async { Ok::<_, ()>(3) }]).await;
    assert_eq!(later, [Settled::LimiterClosed]);
    assert!(limiter.is_closed());
    assert_eq!(limiter.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fan_out_dropped_while_granted_hands_its_permits_on() {
    // A fan-out granted permits but never polled again (its task stalled)
    // holds them; dropping it gives them to the next in line at once.
    let limiter = FairLimiter::new(2);
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let sleeps = |wait| {
        [wait, wait].map(|wait| async move {
            sleep(ms(wait)).await;
            Ok::<_, ()>(())
        })
    };
    let hog_fan_out = fan_out.clone();
    let hog = tokio::spawn(async move { hog_fan_out.settle(sleeps(100)).await });
    let mut stalled = Box::pin(fan_out.settle(sleeps(0)));
    tokio::task::yield_now().await;
    assert!(futures_util::poll!(stalled.as_mut()).is_pending()); // joins the line
    sleep(ms(150)).await; // the hog is done: both permits granted to `stalled`
    assert_eq!(limiter.available(), 0);
    drop(stalled);
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (2, 0, 0)
    );
    hog.await.unwrap();
}

/// A fan-out that may be dropped part-way, with queries that may panic.
fn chaotic(fan_out: &FanOut, rig: &Rig, seed: u64) -> impl Future<Output = ()> + Send + 'static {
    let mut rng = seed;
    let mut next = move |n: u64| {
        // SplitMix64: a fixed, seeded sequence.
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    let tenant = tenant(&format!("tenant-{}", next(5)));
    let queries: Vec<Timed> = (0..1 + next(6))
        .map(|_| Timed {
            panics: next(5) == 0,
            ..rig.query(1 + next(80))
        })
        .collect();
    let fan_out = fan_out.clone().deadline(ms(50 + next(300)));
    let drop_after = (next(3) == 0).then(|| ms(next(200)));
    async move {
        let run = AssertUnwindSafe(fan_out.run(&tenant, queries)).catch_unwind();
        match drop_after {
            Some(after) => drop(tokio::time::timeout(after, run).await),
            None => drop(run.await),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn permits_never_leak_under_cancellation_and_panics() {
    let rig = Rig::new();
    let limiter = FairLimiter::new(4).standing_queue(ms(10), ms(100));
    let fan_out = FanOut::new().timeout(ms(60)).fair_limiter(limiter.clone());
    let handles: Vec<_> = (0..400u64)
        .map(|seed| {
            let work = chaotic(&fan_out, &rig, seed);
            tokio::spawn(async move {
                sleep(ms(seed % 97)).await;
                work.await;
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    assert!(!rig.starts.lock().unwrap().is_empty());
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (4, 0, 0)
    );
}

/// A query with a last good value: shed, it shows that value.
struct WithStale(Timed);

impl DashboardQuery for WithStale {
    type Output = u64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "with_stale"
    }

    async fn run(&self, ctx: QueryContext) -> Result<u64, std::io::Error> {
        self.0.run(ctx).await
    }

    fn fallback(&self) -> u64 {
        0
    }

    async fn stale(&self, _tenant: &TenantId) -> Option<(u64, Duration)> {
        Some((41, ms(30_000)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_shed_widget_shows_its_stale_value_and_logs_at_debug() {
    let capture = support::Capture::default();
    let _guard = capture.install();
    let limiter = FairLimiter::new(1);
    warm(&limiter, ms(100)).await;
    let rig = Rig::new();
    let hog = hog(&limiter, ms(1_000)).await;
    let fan_out = FanOut::new()
        .deadline(ms(300))
        .fair_limiter(limiter.clone());
    let ((stale, plain), report) = fan_out
        .run_with_report(
            &tenant("tenant-b"),
            (WithStale(rig.query(50)), rig.query(50)),
        )
        .await;
    assert_eq!(report.shed(), 2, "the stale one counts too");
    assert_eq!(report.count("stale"), 1);
    assert!(matches!(
        stale.source,
        Source::Stale {
            cause: Failure::Shed,
            ..
        }
    ));
    assert_eq!((stale.value, stale.waited), (41, ms(200)));
    assert!(matches!(plain.source, Source::Fallback(Failure::Shed)));
    hog.await.unwrap();
    let events = capture.events();
    let shed: Vec<_> = events
        .iter()
        .filter(|e| {
            e.field("outcome")
                .is_some_and(|o| o == "stale" || o == "shed")
        })
        .collect();
    assert_eq!(shed.len(), 2);
    for event in shed {
        assert_eq!(event.level, tracing::Level::DEBUG, "{event:?}");
        assert_eq!(event.field("tenant"), Some("tenant-b"));
        assert_eq!(event.field("waited_ms"), Some("200.0"));
    }
    let fan_out_event = events
        .iter()
        .find(|e| e.field("message") == Some("queries shed"))
        .expect("the fan-out says it was shed");
    assert_eq!(fan_out_event.level, tracing::Level::DEBUG);
    assert_eq!(fan_out_event.field("reason"), Some("no_time_left"));
    assert!(
        events
            .iter()
            .all(|e| e.level > tracing::Level::WARN || e.field("outcome").is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn a_queue_that_just_formed_is_not_standing() {
    // A permit busy for a second with nobody waiting, then a first burst:
    // the queue formed at 300 ms, so at 301 ms it has stood for 1 ms, not
    // since the start, and a newcomer gets the full `interval`.
    let limiter = FairLimiter::new(1).standing_queue(ms(20), ms(250));
    let fan_out = FanOut::new()
        .deadline(ms(5_000))
        .fair_limiter(limiter.clone());
    let hog = hog(&limiter, ms(1_000)).await;
    sleep(ms(300)).await;
    let first = fan_out.clone();
    let a = tokio::spawn(async move { first.settle([async { Ok::<_, ()>(()) }]).await });
    sleep(ms(1)).await;
    let begun = Instant::now();
    let b = fan_out.settle([async { Ok::<_, ()>(()) }]).await;
    assert_eq!(b, [Settled::Shed]);
    assert_eq!(begun.elapsed(), ms(250), "the interval, not the target");
    assert_eq!(a.await.unwrap(), [Settled::Shed]); // 300 + 250 < 1 000
    hog.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_endless_iterator_asks_for_no_more_permits_than_there_are() {
    let limiter = FairLimiter::new(2);
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let endless = || {
        fan_out.stream((0_u64..).map(|n| async move {
            sleep(ms(10)).await;
            Ok::<_, ()>(n)
        }))
    };
    let (a, b): (Vec<_>, Vec<_>) =
        tokio::join!(endless().take(5).collect(), endless().take(5).collect());
    assert_eq!((a.len(), b.len()), (5, 5));
    assert_eq!(limiter.queued(), 0, "both streams were dropped");
    assert_eq!(limiter.available(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_queries_that_answered_teach_the_limiter_how_long_queries_take() {
    // Queries of 100 ms answer; then many cut at a 5 ms timeout. Shedding
    // still assumes 100 ms: a waiter due at 500 ms leaves at 400 ms.
    let limiter = FairLimiter::new(1);
    warm(&limiter, ms(100)).await;
    let cut = FanOut::new().timeout(ms(5)).fair_limiter(limiter.clone());
    for _ in 0..20 {
        let settled = cut
            .settle([async {
                sleep(ms(100)).await;
                Ok::<_, ()>(())
            }])
            .await;
        assert_eq!(settled, [Settled::TimedOut]);
    }
    let hog = hog(&limiter, ms(1_000)).await;
    let begun = Instant::now();
    let hurried = FanOut::new()
        .deadline(ms(500))
        .fair_limiter(limiter.clone());
    assert_eq!(
        hurried.settle([async { Ok::<_, ()>(()) }]).await,
        [Settled::Shed]
    );
    assert_eq!(begun.elapsed(), ms(400));
    hog.await.unwrap();
}
