//! The in-process cache, in virtual time: one execution per (tenant, query)
//! per TTL window however many ask, stale-if-error for every kind of
//! failure, no hanging when the executing caller is cancelled or panics,
//! invalidation, and no value ever crossing tenants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fanout::cache::{CachePolicy, Cached, QueryCache};
use fanout::{DashboardQuery, Failure, FanOut, QueryContext, Source, TenantId};
use futures_util::StreamExt;
use futures_util::future::join_all;
use proptest::prelude::*;
use tokio::time::{advance, sleep};

/// A query whose value is its tenant's id, with switches to make it fail,
/// hang or panic, and a count of its executions.
#[derive(Default)]
struct PerTenant {
    name: &'static str,
    runs: AtomicUsize,
    fail: AtomicBool,
    hang: AtomicBool,
    panic_once: AtomicBool,
}

impl PerTenant {
    fn named(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct Unavailable;

impl DashboardQuery for PerTenant {
    type Output = String;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<String, Unavailable> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_millis(50)).await;
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("query exploded");
        }
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(Unavailable);
        }
        Ok(format!("{}:{}", self.name, ctx.tenant()))
    }

    fn fallback(&self) -> String {
        "fallback".to_owned()
    }
}

fn policy() -> CachePolicy {
    CachePolicy::ttl(Duration::from_secs(30)).stale_if_error(Duration::from_secs(300))
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_dashboards_execute_each_query_once_per_ttl_window() {
    let cache = QueryCache::new(10_000);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let children = Cached::new(PerTenant::named("child_count"), &cache, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("creche-1");

    let pages = (0..1000).map(|_| fan_out.run(&t1, (&revenue, &children)));
    let outcomes = join_all(pages).await;
    assert!(
        outcomes
            .iter()
            .all(|(r, c)| r.value == "total_revenue:creche-1" && c.value == "child_count:creche-1")
    );
    assert_eq!((revenue.inner().runs(), children.inner().runs()), (1, 1));
    let fresh = outcomes.iter().filter(|(r, _)| r.is_fresh()).count();
    assert_eq!(fresh, 1, "one caller computed; the rest were served");
    assert!(
        outcomes
            .iter()
            .all(|(r, _)| matches!(r.source, Source::Fresh | Source::Cached { .. }))
    );

    // Still within the TTL: served, not run.
    advance(Duration::from_secs(20)).await;
    join_all((0..1000).map(|_| fan_out.run(&t1, (&revenue, &children)))).await;
    assert_eq!((revenue.inner().runs(), children.inner().runs()), (1, 1));

    // The next window: one more execution each.
    advance(Duration::from_secs(15)).await;
    join_all((0..1000).map(|_| fan_out.run(&t1, (&revenue, &children)))).await;
    assert_eq!((revenue.inner().runs(), children.inner().runs()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_hit_reports_its_age_and_the_ttl_expires_it() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new();
    let t1 = tenant("t1");

    let (first,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(first.is_fresh());
    advance(Duration::from_millis(29_900)).await;
    let (hit,) = fan_out.run(&t1, (&revenue,)).await;
    match hit.source {
        Source::Cached { age } => assert_eq!(age, Duration::from_millis(29_900)),
        other => panic!("expected a hit, got {other:?}"),
    }
    advance(Duration::from_millis(100)).await;
    let (expired,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(expired.is_fresh());
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_query_serves_its_last_good_value_marked_stale_then_its_fallback() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    fan_out.run(&t1, (&revenue,)).await;

    revenue.inner().fail.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(60)).await;
    let (stale,) = fan_out.run(&t1, (&revenue,)).await;
    assert_eq!(stale.value, "total_revenue:t1");
    match &stale.source {
        Source::Stale {
            age,
            cause: Failure::Error(error),
        } => {
            assert_eq!(*age, Duration::from_millis(60_050)); // computed at 50 ms, failed at 60.05 s
            assert_eq!(error.to_string(), "database unavailable");
        }
        other => panic!("expected stale, got {other:?}"),
    }
    assert!(stale.is_degraded());

    // A timeout and a panic are failures too.
    revenue.inner().fail.store(false, Ordering::SeqCst);
    revenue.inner().hang.store(true, Ordering::SeqCst);
    let (timed_out,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(
        matches!(
            timed_out.source,
            Source::Stale {
                cause: Failure::TimedOut,
                ..
            }
        ),
        "{:?}",
        timed_out.source
    );
    revenue.inner().hang.store(false, Ordering::SeqCst);
    revenue.inner().panic_once.store(true, Ordering::SeqCst);
    let (panicked,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(matches!(
        panicked.source,
        Source::Stale {
            cause: Failure::Panicked(_),
            ..
        }
    ));

    // Past ttl + stale_if_error nothing is usable: the fallback.
    revenue.inner().fail.store(true, Ordering::SeqCst);
    advance(Duration::from_secs(300)).await;
    let (fallback,) = fan_out.run(&t1, (&revenue,)).await;
    assert_eq!(fallback.value, "fallback");
    assert!(matches!(
        fallback.source,
        Source::Fallback(Failure::Error(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_never_cached() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new();
    revenue.inner().fail.store(true, Ordering::SeqCst);
    let (failed,) = fan_out.run(&tenant("t1"), (&revenue,)).await;
    assert!(matches!(failed.source, Source::Fallback(_)));
    revenue.inner().fail.store(false, Ordering::SeqCst);
    let (next,) = fan_out.run(&tenant("t1"), (&revenue,)).await;
    assert!(next.is_fresh());
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_executing_caller_does_not_leave_the_others_hanging() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let t1 = tenant("t1");
    // The first caller gives up after 10 ms, mid-execution, and the load
    // it started runs under its deadline; the second waits on the same
    // key, has time left when that load times out, and loads again.
    let impatient = FanOut::new().deadline(Duration::from_millis(10));
    let patient = FanOut::new().timeout(Duration::from_secs(2));
    let ((first,), (second,)) = tokio::join!(impatient.run(&t1, (&revenue,)), async {
        sleep(Duration::from_millis(1)).await;
        patient.run(&t1, (&revenue,)).await
    });
    assert!(matches!(
        first.source,
        Source::Fallback(Failure::DeadlineExceeded)
    ));
    assert!(second.is_fresh(), "{:?}", second.source);
    assert_eq!(second.value, "total_revenue:t1");
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_executing_caller_does_not_leave_the_others_hanging() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    revenue.inner().panic_once.store(true, Ordering::SeqCst);
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let started = tokio::time::Instant::now();
    let outcomes = join_all((0..10).map(|_| fan_out.run(&t1, (&revenue,)))).await;
    // One load, shared: its panic reaches every caller at once, as its
    // value would have.
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert!(outcomes.iter().all(|(o,)| matches!(
        &o.source,
        Source::Fallback(Failure::Panicked(message)) if message == "query exploded"
    )));
    assert_eq!(revenue.inner().runs(), 1);
    // A panic is not stored: the next caller runs the query again.
    let (next,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(next.is_fresh());
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalidating_a_tenant_recomputes_only_that_tenant() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new();
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    fan_out.run(&t1, (&revenue,)).await;
    fan_out.run(&t2, (&revenue,)).await;
    cache.invalidate_tenant(&t1);
    let (a,) = fan_out.run(&t1, (&revenue,)).await;
    let (b,) = fan_out.run(&t2, (&revenue,)).await;
    assert!(a.is_fresh());
    assert!(matches!(b.source, Source::Cached { .. }));
    assert_eq!(revenue.inner().runs(), 3);
}

#[tokio::test(start_paused = true)]
async fn parameterised_queries_are_kept_apart_by_their_key() {
    let cache = QueryCache::new(100);
    let november = Cached::new(PerTenant::named("total_revenue"), &cache, policy()).key("2026-11");
    let october = Cached::new(PerTenant::named("total_revenue"), &cache, policy()).key("2026-10");
    let t1 = tenant("t1");
    FanOut::new().run(&t1, (&november, &october)).await;
    assert_eq!((november.inner().runs(), october.inner().runs()), (1, 1));
}

#[derive(Clone, Debug)]
enum Op {
    Load(u8),
    Invalidate(u8),
    Advance(u16),
    Fail(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4).prop_map(Op::Load),
        1 => (0u8..4).prop_map(Op::Invalidate),
        2 => (0u16..400).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(Op::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the sequence of loads, invalidations, failures and time
    /// passing, a tenant only ever sees its own value or the fallback.
    #[test]
    fn no_value_ever_crosses_tenants(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let cache = QueryCache::new(1_000);
            let policy = CachePolicy::ttl(Duration::from_secs(60)).stale_if_error(Duration::from_secs(120));
            let query = Arc::new(Cached::new(PerTenant::named("q"), &cache, policy));
            let fan_out = FanOut::new().timeout(Duration::from_secs(1));
            for op in ops {
                match op {
                    Op::Load(t) => {
                        let tenant = tenant(&format!("t{t}"));
                        let (outcome,) = fan_out.run(&tenant, (&*query,)).await;
                        let own = format!("q:{tenant}");
                        prop_assert!(outcome.value == own || outcome.value == "fallback", "{} got {}", tenant, outcome.value);
                    }
                    Op::Invalidate(t) => cache.invalidate_tenant(&tenant(&format!("t{t}"))),
                    Op::Advance(s) => advance(Duration::from_secs(u64::from(s))).await,
                    Op::Fail(fail) => query.inner().fail.store(fail, Ordering::SeqCst),
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn twenty_callers_of_a_failing_query_share_one_execution() {
    // Before: moka's per-key compute ran the query once per caller, one
    // after another (20 callers: 20 executions, the last one at 1 s).
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let (first,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(first.is_fresh());
    advance(Duration::from_secs(31)).await; // past the TTL, within stale-if-error
    revenue.inner().fail.store(true, Ordering::SeqCst);

    let started = tokio::time::Instant::now();
    let outcomes = join_all((0..20).map(|_| fan_out.run(&t1, (&revenue,)))).await;
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(
        revenue.inner().runs(),
        2,
        "one execution before, one for all twenty"
    );
    for (outcome,) in &outcomes {
        assert_eq!(outcome.value, "total_revenue:t1");
        assert!(matches!(
            outcome.source,
            Source::Stale {
                cause: Failure::Error(_),
                ..
            }
        ));
        // Stored at 50 ms, looked up 31 s and 50 ms later.
        assert_eq!(
            outcome.source.to_string(),
            "stale (31.1 s old; error: database unavailable)"
        );
    }
    assert_eq!(cache.loads_in_flight(), 0);

    // With nothing stale to show, all twenty get the fallback, still at once.
    let t2 = tenant("t2");
    let outcomes = join_all((0..20).map(|_| fan_out.run(&t2, (&revenue,)))).await;
    assert!(outcomes.iter().all(|(o,)| o.value == "fallback"));
    assert_eq!(revenue.inner().runs(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_still_shares_one_load_between_concurrent_callers() {
    // Stale-if-error only: no value is served as cached later, but callers
    // that arrive together share one execution.
    let cache = QueryCache::new(100);
    let only_stale = CachePolicy::ttl(Duration::ZERO).stale_if_error(Duration::from_secs(300));
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, only_stale);
    let fan_out = FanOut::new();
    let t1 = tenant("t1");
    let started = tokio::time::Instant::now();
    let outcomes = join_all((0..20).map(|_| fan_out.run(&t1, (&revenue,)))).await;
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(revenue.inner().runs(), 1);
    assert_eq!(outcomes.iter().filter(|(o,)| o.is_fresh()).count(), 1);
    assert!(outcomes.iter().all(|(o,)| o.value == "total_revenue:t1"));
    // A later caller runs the query again: nothing is served from a zero TTL.
    let (later,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(later.is_fresh());
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_parked_caller_never_delays_the_others() {
    // The first caller starts the load, then is never polled again (a
    // dashboard future parked in a `select!`, a stream feeding a slow
    // client). Before: the load ran inside its task, under moka's per-key
    // lock, and every other caller waited out its own timeout.
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let mut parked = Box::pin(fan_out.run(&t1, (&revenue,)));
    assert!(futures_util::poll!(parked.as_mut()).is_pending());

    let started = tokio::time::Instant::now();
    let (other,) = fan_out.run(&t1, (&revenue,)).await;
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(other.value, "total_revenue:t1");
    assert_eq!(
        revenue.inner().runs(),
        1,
        "the parked caller's load, driven by the other"
    );

    // The parked caller, polled at last, has its value too.
    let (late,) = parked.await;
    assert_eq!(late.value, "total_revenue:t1");
    assert_eq!(revenue.inner().runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_parked_stream_never_delays_the_others() {
    let cache = QueryCache::new(100);
    let widgets = vec![Cached::new(
        PerTenant::named("total_revenue"),
        &cache,
        policy(),
    )];
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let mut parked = fan_out.run_stream(&t1, &widgets);
    assert!(futures_util::poll!(parked.next()).is_pending());
    let started = tokio::time::Instant::now();
    let outcomes = fan_out.run(&t1, vec![&widgets[0]]).await;
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(outcomes[0].value, "total_revenue:t1");
    drop(parked);
}

#[tokio::test(start_paused = true)]
async fn a_load_whose_waiters_are_all_dropped_is_cancelled_and_stores_nothing() {
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    revenue.inner().hang.store(true, Ordering::SeqCst);
    let fan_out = FanOut::new();
    let t1 = tenant("t1");
    let mut first = Box::pin(fan_out.run(&t1, (&revenue,)));
    let mut second = Box::pin(fan_out.run(&t1, (&revenue,)));
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    assert!(futures_util::poll!(second.as_mut()).is_pending());
    assert_eq!(cache.loads_in_flight(), 1);
    assert_eq!(revenue.inner().runs(), 1);
    // Both callers hang up: the load (and the query inside it) is dropped.
    drop(first);
    assert_eq!(
        cache.loads_in_flight(),
        1,
        "the second caller still waits on it"
    );
    drop(second);
    assert_eq!(cache.loads_in_flight(), 0);

    // Nothing was stored; the next caller starts a new load.
    revenue.inner().hang.store(false, Ordering::SeqCst);
    let (next,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(next.is_fresh());
    assert_eq!(revenue.inner().runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_shared_load_that_outlives_its_starter_is_bounded_by_its_deadline() {
    // The starter's deadline (plus a 25 ms grace) bounds the load; a
    // waiter whose own deadline is no later shares its timeout.
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    revenue.inner().hang.store(true, Ordering::SeqCst);
    let fan_out = FanOut::new().timeout(Duration::from_millis(500));
    let t1 = tenant("t1");
    let started = tokio::time::Instant::now();
    let outcomes = join_all((0..3).map(|_| fan_out.run(&t1, (&revenue,)))).await;
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    assert!(
        outcomes
            .iter()
            .all(|(o,)| matches!(o.source, Source::Fallback(Failure::TimedOut)))
    );
    assert_eq!(revenue.inner().runs(), 1);
    assert_eq!(cache.loads_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn invalidated_tenants_are_forgotten_once_their_old_values_have_expired() {
    // Before: one generation record per tenant ever invalidated, for ever.
    let cache = QueryCache::new(100);
    let revenue = Cached::new(PerTenant::named("total_revenue"), &cache, policy());
    let fan_out = FanOut::new();
    let t1 = tenant("t1");
    let (before,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(before.is_fresh());
    cache.invalidate_tenant(&t1);
    for n in 0..10_000 {
        cache.invalidate_tenant(&tenant(&format!("other-{n}")));
    }
    assert_eq!(cache.invalidated_tenants(), 10_001);

    // Still remembered while a value from before could be served (30 s TTL
    // + 300 s stale-if-error, plus a minute)...
    advance(Duration::from_secs(389)).await;
    for n in 0..10_000 {
        cache.invalidate_tenant(&tenant(&format!("again-{n}")));
    }
    assert!(cache.invalidated_tenants() >= 20_000);
    // ...forgotten after: the table holds the recent invalidations only.
    advance(Duration::from_secs(400)).await;
    for n in 0..64 {
        cache.invalidate_tenant(&tenant(&format!("late-{n}")));
    }
    assert!(
        cache.invalidated_tenants() <= 64,
        "{} records",
        cache.invalidated_tenants()
    );

    // t1 is back at generation 0, where its value from before the
    // invalidation lives on in moka's table but is too old to serve, even
    // stale: the query runs.
    assert_eq!(cache.generation(&t1), 0);
    revenue.inner().fail.store(true, Ordering::SeqCst);
    let (after,) = fan_out.run(&t1, (&revenue,)).await;
    assert!(
        matches!(after.source, Source::Fallback(_)),
        "{:?}",
        after.source
    );
    assert_eq!(revenue.inner().runs(), 2);
}

/// A query whose first execution waits for a gate and returns the data as
/// it was when it started; later executions return the data as it is.
struct Versioned {
    version: AtomicUsize,
    gate: tokio::sync::Notify,
    first: AtomicBool,
}

impl DashboardQuery for Versioned {
    type Output = usize;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        "total_revenue"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<usize, Unavailable> {
        let read = self.version.load(Ordering::SeqCst);
        if self.first.swap(false, Ordering::SeqCst) {
            self.gate.notified().await;
        }
        Ok(read)
    }

    fn fallback(&self) -> usize {
        0
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_that_outlives_a_forgotten_invalidation_neither_stores_nor_takes_joiners() {
    // A load with no deadline starts for t1 at generation 0; t1 is then
    // invalidated, and stays quiet until its record is swept, which puts
    // it back at generation 0. The old load must not hand its old value
    // to anyone arriving after that, nor store it.
    let cache = QueryCache::new(100);
    let policy = CachePolicy::ttl(Duration::from_secs(5));
    let revenue = Cached::new(
        Versioned {
            version: AtomicUsize::new(1),
            gate: tokio::sync::Notify::new(),
            first: AtomicBool::new(true),
        },
        &cache,
        policy,
    );
    let fan_out = FanOut::new();
    let t1 = tenant("t1");
    let mut old = Box::pin(fan_out.run(&t1, (&revenue,)));
    assert!(futures_util::poll!(old.as_mut()).is_pending());

    cache.invalidate_tenant(&t1);
    revenue.inner().version.store(2, Ordering::SeqCst);
    // Records live 5 s (the longest keep_for stored so far is none: 0) plus
    // a minute; well past that, other invalidations sweep t1's record.
    advance(Duration::from_secs(120)).await;
    for n in 0..64 {
        cache.invalidate_tenant(&tenant(&format!("other-{n}")));
    }
    assert_eq!(cache.generation(&t1), 0, "t1's record was swept");
    // A value kept for an hour is stored after the sweep: records now live
    // longer, which must not stretch the old load's own limit.
    let hourly = Cached::new(
        PerTenant::named("child_count"),
        &cache,
        CachePolicy::ttl(Duration::from_secs(3600)),
    );
    let (warmed,) = fan_out.run(&tenant("t2"), (&hourly,)).await;
    assert!(warmed.is_fresh());

    // A new caller does not join the old load (it would wait on the gate
    // until its timeout): it loads the data as it is now.
    let patient = FanOut::new().timeout(Duration::from_secs(10));
    let (new,) = patient.run(&t1, (&revenue,)).await;
    assert_eq!(new.value, 2);
    assert!(new.is_fresh());

    // The old load ends with its old value for its own caller only...
    revenue.inner().gate.notify_waiters();
    let (old,) = old.await;
    assert_eq!(old.value, 1);
    // ...and stored nothing: the next caller is served the new value.
    let (next,) = fan_out.run(&t1, (&revenue,)).await;
    assert_eq!(next.value, 2);
    assert!(matches!(next.source, Source::Cached { .. }));
}
