//! The cache's shared tier against a real Redis (`REDIS_URL`, which
//! `scripts/test` sets, or a throw-away one of this test binary): values shared between instances, invalidation
//! by generation, a Redis killed or hung mid-test, the stampede bound across
//! four instances, and no value ever crossing tenants.
//!
//! Real time throughout: the ages in Redis are wall-clock. Every test keeps
//! its keys under a namespace of its own.
#![cfg(feature = "redis")]

mod support;

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fanout::cache::{CachePolicy, QueryCache, RedisTier, SharedCache, SharedCached};
use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
use futures_util::future::join_all;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use support::Capture;
// The Redis every test but the kill tests uses: `REDIS_URL`, or one
// started for this test binary.
use throwaway::redis_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;
use tracing::Level;

/// A namespace no other test (or earlier run) uses.
fn namespace(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fanout-test:{test}:{nanos}")
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// A dashboard value with the usual parts: a struct, a string, a Vec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Totals {
    tenant: String,
    revenue: i64,
    /// Which execution of the query computed it (1, 2, ...).
    run: usize,
    items: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct Unavailable;

/// A query whose value names its tenant, with a latency, a switch to make
/// it fail, and a count of its executions shared by its clones (one clone
/// per instance: the count is the database's).
#[derive(Clone)]
struct Revenue {
    latency: Duration,
    runs: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
}

impl Revenue {
    fn new(latency_ms: u64) -> Self {
        Self {
            latency: Duration::from_millis(latency_ms),
            runs: Arc::default(),
            fail: Arc::default(),
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl DashboardQuery for Revenue {
    type Output = Totals;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        "total_revenue"
    }

    async fn run(&self, ctx: QueryContext) -> Result<Totals, Unavailable> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        sleep(self.latency).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(Unavailable);
        }
        Ok(Totals {
            tenant: ctx.tenant().to_string(),
            revenue: 125_000,
            run,
            items: vec!["invoices".to_owned(), "payments".to_owned()],
        })
    }

    fn fallback(&self) -> Totals {
        Totals {
            tenant: "fallback".to_owned(),
            revenue: 0,
            run: 0,
            items: Vec::new(),
        }
    }
}

fn policy() -> CachePolicy {
    CachePolicy::ttl(Duration::from_secs(30)).stale_if_error(Duration::from_secs(300))
}

/// One service instance: its own in-process cache in front of `redis`.
fn instance(redis: &RedisTier, query: &Revenue, policy: CachePolicy) -> SharedCached<Revenue> {
    let cache = SharedCache::new(&QueryCache::new(1_000), redis);
    SharedCached::new(query.clone(), &cache, policy)
}

#[tokio::test]
async fn two_instances_with_their_own_caches_share_values_through_redis() {
    let redis = RedisTier::connect(&redis_url(), &namespace("share"))
        .await
        .unwrap();
    let (db_a, db_b) = (Revenue::new(20), Revenue::new(20));
    let (a, b) = (
        instance(&redis, &db_a, policy()),
        instance(&redis, &db_b, policy()),
    );
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("creche-1");

    let (computed,) = fan_out.run(&t1, (&a,)).await;
    assert!(computed.is_fresh(), "{:?}", computed.source);
    assert_eq!(db_a.runs(), 1);

    let (shared,) = fan_out.run(&t1, (&b,)).await;
    match shared.source {
        Source::Cached { age } => assert!(age < Duration::from_secs(1), "{age:?}"),
        other => panic!("expected the value from Redis, got {other:?}"),
    }
    assert_eq!(shared.value, computed.value);
    assert_eq!(db_b.runs(), 0, "instance B never ran the query");

    // B now holds it in its own in-process tier as well.
    let (again,) = fan_out.run(&t1, (&b,)).await;
    assert!(matches!(again.source, Source::Cached { .. }));
    assert_eq!((db_a.runs(), db_b.runs()), (1, 0));
}

#[tokio::test]
async fn a_failing_query_serves_a_value_another_instance_stored_marked_stale() {
    let redis = RedisTier::connect(&redis_url(), &namespace("stale"))
        .await
        .unwrap();
    let policy =
        CachePolicy::ttl(Duration::from_millis(300)).stale_if_error(Duration::from_secs(30));
    let (db_a, db_b) = (Revenue::new(5), Revenue::new(5));
    let (a, b) = (
        instance(&redis, &db_a, policy),
        instance(&redis, &db_b, policy),
    );
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");

    let (computed,) = fan_out.run(&t1, (&a,)).await;
    assert!(computed.is_fresh());
    sleep(Duration::from_millis(350)).await;
    db_b.fail.store(true, Ordering::SeqCst);
    let (stale,) = fan_out.run(&t1, (&b,)).await;
    match &stale.source {
        Source::Stale { age, cause } => {
            assert!(*age >= Duration::from_millis(350), "{age:?}");
            assert_eq!(cause.to_string(), "error: database unavailable");
        }
        other => panic!("expected the shared value, stale, got {other:?}"),
    }
    assert_eq!(stale.value, computed.value);
}

#[tokio::test]
async fn invalidating_a_tenant_recomputes_only_that_tenant_on_every_instance() {
    let redis = RedisTier::connect(&redis_url(), &namespace("invalidate"))
        .await
        .unwrap();
    let check = Duration::from_millis(100);
    let db = Revenue::new(5);
    let cache_a = SharedCache::new(&QueryCache::new(100), &redis);
    let cache_b = SharedCache::new(
        &QueryCache::new(100),
        &redis.clone().generation_check(check),
    );
    let a = SharedCached::new(db.clone(), &cache_a, policy());
    let b = SharedCached::new(db.clone(), &cache_b, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let (t1, t2) = (tenant("t1"), tenant("t2"));

    for t in [&t1, &t2] {
        assert!(fan_out.run(t, (&a,)).await.0.is_fresh());
        assert!(matches!(
            fan_out.run(t, (&b,)).await.0.source,
            Source::Cached { .. }
        ));
    }
    assert_eq!(db.runs(), 2);

    assert_eq!(cache_a.invalidate_tenant(&t1).await.unwrap(), 1);
    assert_eq!(redis.generation(&t1).await.unwrap(), 1);
    assert_eq!(redis.generation(&t2).await.unwrap(), 0);

    // On the instance that invalidated: at once.
    let (recomputed,) = fan_out.run(&t1, (&a,)).await;
    assert!(recomputed.is_fresh(), "{:?}", recomputed.source);
    assert_eq!(recomputed.value.run, 3);
    let (kept,) = fan_out.run(&t2, (&a,)).await;
    assert!(matches!(kept.source, Source::Cached { .. }));

    // On the other: once it re-reads the generation, it takes the new
    // value from Redis, and still runs nothing.
    sleep(check + Duration::from_millis(20)).await;
    let (followed,) = fan_out.run(&t1, (&b,)).await;
    assert!(
        matches!(followed.source, Source::Cached { .. }),
        "{:?}",
        followed.source
    );
    assert_eq!(followed.value.run, 3);
    let (other,) = fan_out.run(&t2, (&b,)).await;
    assert_eq!(other.value.run, 2);
    assert_eq!(db.runs(), 3);
}

/// A redis-server of this test's own, on a free loopback port: a
/// `throwaway::Redis`, removed when dropped (also when the test fails) or
/// when this test binary exits, however it exits.
struct OwnRedis {
    port: u16,
    server: throwaway::Redis,
}

impl OwnRedis {
    fn started(server: Result<throwaway::Redis, String>) -> Self {
        let server = server.unwrap_or_else(|e| panic!("this test kills a Redis of its own: {e}"));
        Self {
            port: server.port(),
            server,
        }
    }

    fn start_on(port: u16) -> Self {
        Self::started(throwaway::Redis::start_on(port))
    }

    fn start() -> Self {
        Self::started(throwaway::Redis::start())
    }

    fn url(&self) -> String {
        self.server.url().to_owned()
    }

    /// Connects once the server answers.
    async fn connect(&self, namespace: &str) -> RedisTier {
        let started = Instant::now();
        loop {
            match RedisTier::connect(&self.url(), namespace).await {
                Ok(redis) => return redis,
                Err(error) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("own redis-server never answered: {error}")
                }
                Err(_) => sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        self.server.kill().unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The Redis WARN events in `capture`.
fn redis_warnings(capture: &Capture) -> usize {
    capture
        .events()
        .iter()
        .filter(|e| e.level == Level::WARN && e.field("namespace").is_some())
        .count()
}

/// Runs `rounds` one-widget dashboards on each instance, over fresh and
/// cached tenants; returns the slowest one's wall time. Fails on any
/// outcome that is not the tenant's own value, fresh or cached.
async fn dashboards_while_degraded(
    instances: &[&SharedCached<Revenue>],
    rounds: usize,
    first_new_tenant: usize,
) -> Duration {
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let mut slowest = Duration::ZERO;
    for round in 0..rounds {
        for (i, query) in instances.iter().enumerate() {
            // Tenant t0 was cached before Redis went; the others are new.
            let id = if round % 2 == 0 {
                "t0".to_owned()
            } else {
                format!("t{}", first_new_tenant + round * instances.len() + i)
            };
            let tenant = tenant(&id);
            let started = Instant::now();
            let (outcome,) = fan_out.run(&tenant, (*query,)).await;
            slowest = slowest.max(started.elapsed());
            assert!(
                matches!(outcome.source, Source::Fresh | Source::Cached { .. }),
                "{id}: {:?}",
                outcome.source
            );
            assert_eq!(outcome.value.tenant, id);
        }
        sleep(Duration::from_millis(100)).await;
    }
    slowest
}

const QUERY_MS: u64 = 20;
const CALL_TIMEOUT: Duration = Duration::from_millis(50);
/// Scheduling noise on a loaded two-core machine. Kept below two more call
/// timeouts, so a tier that waited out several timed-out calls per
/// dashboard (no circuit breaker: 20 + 3 x 50 ms or more) still fails.
const SLACK: Duration = Duration::from_millis(80);

#[tokio::test(flavor = "current_thread")]
async fn a_redis_killed_mid_test_degrades_to_the_local_tier_and_the_database_with_one_warning() {
    let capture = Capture::default();
    let _guard = capture.install();
    let mut own = OwnRedis::start();
    let ns = namespace("killed");
    // Two instances, each with its own connection (as two processes).
    let (redis_a, redis_b) = (own.connect(&ns).await, own.connect(&ns).await);
    let db = Revenue::new(QUERY_MS);
    let a = instance(&redis_a, &db, policy());
    let b = instance(&redis_b, &db, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    assert!(fan_out.run(&tenant("t0"), (&a,)).await.0.is_fresh());
    assert!(matches!(
        fan_out.run(&tenant("t0"), (&b,)).await.0.source,
        Source::Cached { .. }
    ));
    assert_eq!(redis_warnings(&capture), 0);

    own.kill();
    // 15 rounds of 100 ms: past the 1 s pause, so each tier also tries the
    // dead Redis again.
    let slowest = dashboards_while_degraded(&[&a, &b], 15, 1).await;
    let limit = Duration::from_millis(QUERY_MS) + CALL_TIMEOUT + SLACK;
    println!("Redis killed: slowest dashboard {slowest:?} (limit {limit:?})");
    assert!(slowest <= limit, "{slowest:?} > {limit:?}");
    assert_eq!(
        redis_warnings(&capture),
        2,
        "one WARN per tier: {:#?}",
        capture.events()
    );

    // Redis back on the same port: the tiers find it again and log so.
    let _own = OwnRedis::start_on(own.port);
    let started = Instant::now();
    let recovered = |capture: &Capture| {
        capture
            .events()
            .iter()
            .filter(|e| e.level == Level::INFO && e.field("namespace").is_some())
            .count()
    };
    while recovered(&capture) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the tiers never recovered"
        );
        dashboards_while_degraded(&[&a, &b], 1, 1_000).await;
    }
    assert_eq!(redis_warnings(&capture), 2);
}

/// A TCP proxy to `upstream` that, once `hang` is set, stops passing bytes
/// and answers no new connection: a Redis that is there but silent.
async fn hanging_proxy(upstream: String, hang: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, hang) = (upstream.clone(), Arc::clone(&hang));
            tokio::spawn(async move {
                if hang.load(Ordering::SeqCst) {
                    let _held = client;
                    std::future::pending::<()>().await;
                    return;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pass(client_read, server_write, Arc::clone(&hang)),
                    pass(server_read, client_write, hang)
                );
            });
        }
    });
    port
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hang: Arc<AtomicBool>,
) {
    let mut buffer = [0; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if hang.load(Ordering::SeqCst) {
            // Keep both sockets open, say nothing.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// `redis://[user:pass@]host[:port][/db]` → (`host:port`, the URL with
/// `host:port` replaced by `127.0.0.1:{port}`).
fn through_proxy(url: &str, port: u16) -> (String, String) {
    let rest = url
        .strip_prefix("redis://")
        .expect("REDIS_URL must start with redis://");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (format!("{userinfo}@"), host),
        None => (String::new(), authority),
    };
    let upstream = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    (
        upstream,
        format!("redis://{userinfo}127.0.0.1:{port}/{path}"),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_hung_redis_costs_a_dashboard_at_most_one_call_timeout() {
    let capture = Capture::default();
    let _guard = capture.install();
    let hang = Arc::new(AtomicBool::new(false));
    let (upstream, _) = through_proxy(&redis_url(), 0);
    let port = hanging_proxy(upstream, Arc::clone(&hang)).await;
    let (_, url) = through_proxy(&redis_url(), port);
    let ns = namespace("hung");
    let redis_a = RedisTier::connect(&url, &ns).await.unwrap();
    let redis_b = RedisTier::connect(&url, &ns).await.unwrap();
    let db = Revenue::new(QUERY_MS);
    let a = instance(&redis_a, &db, policy());
    let b = instance(&redis_b, &db, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    assert!(fan_out.run(&tenant("t0"), (&a,)).await.0.is_fresh());
    assert!(matches!(
        fan_out.run(&tenant("t0"), (&b,)).await.0.source,
        Source::Cached { .. }
    ));

    hang.store(true, Ordering::SeqCst);
    let slowest = dashboards_while_degraded(&[&a, &b], 15, 1).await;
    let limit = Duration::from_millis(QUERY_MS) + CALL_TIMEOUT + SLACK;
    println!("Redis hung: slowest dashboard {slowest:?} (limit {limit:?})");
    assert!(slowest <= limit, "{slowest:?} > {limit:?}");
    assert_eq!(
        redis_warnings(&capture),
        2,
        "one WARN per tier: {:#?}",
        capture.events()
    );
    assert!(
        redis_a
            .generation(&tenant("t0"))
            .await
            .unwrap_err()
            .to_string()
            .ends_with("no answer within 50 ms")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_across_four_instances_runs_each_query_at_most_twice() {
    let ns = namespace("stampede");
    let mut redis = Vec::new();
    for _ in 0..4 {
        // Waiting on the lock holder (and each Redis call) may take ten
        // times the 200 ms query before an instance computes the value
        // itself: on two loaded cores the defaults' 50 ms of slack were
        // sometimes not enough, and what this test checks is the lock,
        // not the machine's scheduling.
        let tier = RedisTier::connect(&redis_url(), &ns)
            .await
            .unwrap()
            .lock_wait(Duration::from_secs(2))
            .call_timeout(Duration::from_millis(500));
        redis.push(tier);
    }
    let keys = ["2026-09", "2026-10", "2026-11"];
    let databases: Vec<Revenue> = keys.iter().map(|_| Revenue::new(200)).collect();
    // Four instances, each with its own in-process cache and one wrapped
    // query per key.
    let instances: Vec<Arc<Vec<SharedCached<Revenue>>>> = redis
        .iter()
        .map(|redis| {
            let cache = SharedCache::new(&QueryCache::new(1_000), redis);
            let queries = keys
                .iter()
                .zip(&databases)
                .map(|(key, db)| SharedCached::new(db.clone(), &cache, policy()).key(key))
                .collect();
            Arc::new(queries)
        })
        .collect();

    let t1 = tenant("creche-1");
    let mut callers = Vec::new();
    for queries in &instances {
        for _ in 0..32 {
            let (queries, t1) = (Arc::clone(queries), t1.clone());
            callers.push(tokio::spawn(async move {
                let fan_out = FanOut::new().timeout(Duration::from_secs(2));
                let dashboard: Vec<&SharedCached<Revenue>> = queries.iter().collect();
                fan_out.run(&t1, dashboard).await
            }));
        }
    }
    let outcomes: Vec<_> = join_all(callers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    assert_eq!(outcomes.len(), 128);
    for dashboard in &outcomes {
        for outcome in dashboard {
            assert!(
                matches!(outcome.source, Source::Fresh | Source::Cached { .. }),
                "{:?}",
                outcome.source
            );
            assert_eq!(outcome.value.tenant, "creche-1");
        }
    }
    let runs: Vec<usize> = databases.iter().map(Revenue::runs).collect();
    println!("executions per key, 4 instances x 32 callers: {runs:?}");
    assert!(runs.iter().all(|&n| (1..=2).contains(&n)), "{runs:?}");
}

#[derive(Clone, Debug)]
enum Op {
    Load {
        instance: usize,
        tenant: u8,
    },
    Invalidate {
        instance: usize,
        tenant: u8,
    },
    /// A new in-process cache for the instance: a restart, after which its
    /// values come from Redis.
    Restart(usize),
    Fail(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0u8..4).prop_map(|(instance, tenant)| Op::Load { instance, tenant }),
        1 => (0..2usize, 0u8..4).prop_map(|(instance, tenant)| Op::Invalidate { instance, tenant }),
        2 => (0..2usize).prop_map(Op::Restart),
        1 => any::<bool>().prop_map(Op::Fail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the sequence of loads, invalidations, restarts and
    /// failures on two instances sharing Redis, a tenant only ever sees its
    /// own value or the fallback.
    #[test]
    fn no_value_ever_crosses_tenants_through_redis(ops in proptest::collection::vec(op(), 1..30)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let redis = RedisTier::connect(&redis_url(), &namespace("tenants")).await.unwrap()
                .generation_check(Duration::ZERO);
            let db = Revenue::new(0);
            let start = || {
                let cache = SharedCache::new(&QueryCache::new(1_000), &redis);
                let query = SharedCached::new(db.clone(), &cache, policy());
                (cache, query)
            };
            let mut instances = [start(), start()];
            let fan_out = FanOut::new().timeout(Duration::from_secs(2));
            for op in ops {
                match op {
                    Op::Load { instance, tenant: t } => {
                        let id = format!("t{t}");
                        let (outcome,) = fan_out.run(&tenant(&id), (&instances[instance].1,)).await;
                        prop_assert!(
                            outcome.value.tenant == id || outcome.value.tenant == "fallback",
                            "{} got {:?}", id, outcome.value
                        );
                    }
                    Op::Invalidate { instance, tenant: t } => {
                        instances[instance].0.invalidate_tenant(&tenant(&format!("t{t}"))).await.unwrap();
                    }
                    Op::Restart(i) => instances[i] = start(),
                    Op::Fail(fail) => db.fail.store(fail, Ordering::SeqCst),
                }
            }
            Ok(())
        })?;
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The events a tier logs about a failed Redis call (the WARN that opens
/// an episode, or the DEBUG of a later failure).
fn failed_calls(capture: &Capture) -> usize {
    capture
        .events()
        .iter()
        .filter(|e| e.field("namespace").is_some() && e.field("error").is_some())
        .count()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retry_after_of_duration_max_never_tries_a_failing_redis_again() {
    let capture = Capture::default();
    let _guard = capture.install();
    let url = format!("redis://127.0.0.1:{}/", closed_port());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);

    // The default pause: after it, one query tries the dead Redis again.
    let probing = RedisTier::connect_lazy(&url, &namespace("retry-default")).unwrap();
    let query = instance(&probing, &Revenue::new(1), policy());
    assert!(fan_out.run(&tenant("t1"), (&query,)).await.0.is_fresh());
    assert_eq!(failed_calls(&capture), 1);
    tokio::time::advance(ten_years).await;
    assert!(fan_out.run(&tenant("t2"), (&query,)).await.0.is_fresh());
    assert_eq!(failed_calls(&capture), 2, "{:#?}", capture.events());

    // Duration::MAX: never again, however long the wait (no overflow).
    let never = RedisTier::connect_lazy(&url, &namespace("retry-never"))
        .unwrap()
        .retry_after(Duration::MAX);
    let query = instance(&never, &Revenue::new(1), policy());
    for (round, id) in ["t1", "t2", "t3"].into_iter().enumerate() {
        let (outcome,) = fan_out.run(&tenant(id), (&query,)).await;
        assert!(outcome.is_fresh(), "round {round}: {:?}", outcome.source);
        assert_eq!(failed_calls(&capture), 3, "round {round}");
        tokio::time::advance(ten_years).await;
    }
}

/// The value and lock keys in `namespace` (test-side view of Redis).
async fn keys_matching(pattern: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut connection)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn redis_command<T: redis::FromRedisValue>(command: &mut redis::Cmd) -> T {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut connection).await.unwrap()
}

/// Every setter at `Duration::MAX`: the longest waits, never a panic.
fn at_max(redis: &RedisTier) -> RedisTier {
    redis
        .clone()
        .call_timeout(Duration::MAX)
        .lock_ttl(Duration::MAX)
        .lock_wait(Duration::MAX)
        .generation_check(Duration::MAX)
        .retry_after(Duration::MAX)
}

#[tokio::test]
async fn a_lock_wait_of_duration_max_waits_for_the_value_or_the_free_lock_within_the_deadline() {
    let ns = namespace("lock-wait-max");
    let redis = RedisTier::connect(&redis_url(), &ns).await.unwrap();
    let patient = at_max(&RedisTier::connect(&redis_url(), &ns).await.unwrap());
    let fan_out = FanOut::new().timeout(Duration::from_secs(5));

    // 1. The value comes: A holds the lock for its 300 ms query; B waits
    //    for A's value, however long that takes, and runs nothing.
    let (db_a, db_b) = (Revenue::new(300), Revenue::new(1));
    let a = instance(&redis, &db_a, policy());
    let b = instance(&patient, &db_b, policy());
    let t1 = tenant("t1");
    let computing = tokio::spawn({
        let (fan_out, t1) = (fan_out.clone(), t1.clone());
        async move { fan_out.run(&t1, (&a,)).await.0 }
    });
    sleep(Duration::from_millis(50)).await;
    let (waited,) = fan_out.run(&t1, (&b,)).await;
    let computed = computing.await.unwrap();
    assert!(computed.is_fresh(), "{:?}", computed.source);
    assert!(
        matches!(waited.source, Source::Cached { .. }),
        "{:?}",
        waited.source
    );
    assert_eq!(waited.value, computed.value);
    assert_eq!((db_a.runs(), db_b.runs()), (1, 0));

    // 2. The lock is never released (its holder went away mid-query):
    //    the caller's own timeout ends the wait, with the fallback.
    let t2 = tenant("t2");
    let (db_a, db_b) = (Revenue::new(60_000), Revenue::new(1));
    let a = instance(&redis, &db_a, policy());
    let b = instance(&patient, &db_b, policy());
    let holder = tokio::spawn({
        let t2 = t2.clone();
        async move { FanOut::new().run(&t2, (&a,)).await }
    });
    sleep(Duration::from_millis(50)).await;
    holder.abort();
    assert_eq!(keys_matching(&format!("{ns}:lock:t2:*")).await.len(), 1);
    let started = Instant::now();
    let short = FanOut::new().timeout(Duration::from_millis(300));
    let (bounded,) = short.run(&t2, (&b,)).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(bounded.source, Source::Fallback(fanout::Failure::TimedOut)),
        "{:?}",
        bounded.source
    );
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(db_b.runs(), 0);

    // 3. The lock is freed without a value: the waiter takes it and runs
    //    the query itself.
    let waiting = tokio::spawn({
        let (fan_out, t2) = (fan_out.clone(), t2.clone());
        async move { fan_out.run(&t2, (&b,)).await.0 }
    });
    sleep(Duration::from_millis(100)).await;
    for lock in keys_matching(&format!("{ns}:lock:t2:*")).await {
        redis_command::<()>(redis::cmd("DEL").arg(lock)).await;
    }
    let took_over = waiting.await.unwrap();
    assert!(took_over.is_fresh(), "{:?}", took_over.source);
    assert_eq!(took_over.value.tenant, "t2");
}

/// The same value type in two releases of a service. In production both
/// are `app::Balance`, with one type name and so one fingerprint; here
/// they are two types, and [`as_if_one_type`] moves the old release's bytes
/// to the key the new one reads.
mod release_1 {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Balance {
        pub revenue: i64,
        pub cost: i64,
    }
}

mod release_2 {
    use serde::{Deserialize, Serialize};

    /// Release 1's fields, reordered.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Balance {
        pub cost: i64,
        pub revenue: i64,
    }

    /// Release 1's `cost`, renamed.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct Renamed {
        pub revenue: i64,
        pub costs: i64,
    }
}

/// A value with an optional field left out when empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Annotated {
    revenue: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    items: Vec<String>,
}

/// A query named `balance` returning a fixed value, counting its runs.
#[derive(Clone)]
struct Returns<T> {
    value: T,
    runs: Arc<AtomicUsize>,
}

impl<T> Returns<T> {
    fn new(value: T) -> Self {
        Self {
            value,
            runs: Arc::default(),
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl<T: Clone + Default + Send + Sync> DashboardQuery for Returns<T> {
    type Output = T;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        "balance"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<T, Unavailable> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(self.value.clone())
    }

    fn fallback(&self) -> T {
        T::default()
    }
}

/// A new instance (empty in-process tier) serving `query` through `redis`.
fn fresh_instance<T>(redis: &RedisTier, query: &Returns<T>) -> SharedCached<Returns<T>>
where
    T: Clone,
{
    SharedCached::new(
        query.clone(),
        &SharedCache::new(&QueryCache::new(100), redis),
        policy(),
    )
}

/// The value keys in `ns`.
async fn value_keys(ns: &str) -> Vec<String> {
    keys_matching(&format!("{ns}:v2:*")).await
}

/// Makes every value key in `ns` hold `bytes`: as if the builds that wrote
/// them shared one type name, so one key.
async fn as_if_one_type(ns: &str, bytes: &[u8]) {
    for key in value_keys(ns).await {
        redis_command::<()>(redis::cmd("SET").arg(key).arg(bytes).arg("KEEPTTL")).await;
    }
}

async fn stored_bytes(key: &str) -> Vec<u8> {
    redis_command(redis::cmd("GET").arg(key)).await
}

/// A tier in a namespace of `test`'s own, holding the value release 1
/// computed for tenant `t1` (asserted fresh); returns the namespace, the
/// tier and release 1's query.
async fn release_1_stored(test: &str) -> (String, RedisTier, Returns<release_1::Balance>) {
    let ns = namespace(test);
    let redis = RedisTier::connect(&redis_url(), &ns).await.unwrap();
    let old = Returns::new(release_1::Balance {
        revenue: 125_000,
        cost: 40_000,
    });
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let (first,) = fan_out
        .run(&tenant("t1"), (&fresh_instance(&redis, &old),))
        .await;
    assert!(first.is_fresh(), "{:?}", first.source);
    (ns, redis, old)
}

fn decode_warnings(capture: &Capture) -> usize {
    capture
        .events()
        .iter()
        .filter(|e| e.level == Level::WARN && e.field("query") == Some("balance"))
        .count()
}

#[tokio::test]
async fn a_value_stored_by_a_release_with_reordered_fields_reads_back_exactly() {
    let (ns, redis, _old) = release_1_stored("reordered").await;
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let [old_key] = <[String; 1]>::try_from(value_keys(&ns).await).unwrap();
    let old_bytes = stored_bytes(&old_key).await;

    // Release 2 computes its own value under its own key ...
    let new = Returns::new(release_2::Balance {
        cost: 1,
        revenue: 2,
    });
    fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    // ... and, were the type names one, would read release 1's bytes.
    as_if_one_type(&ns, &old_bytes).await;
    let (read,) = fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    assert!(
        matches!(read.source, Source::Cached { .. }),
        "{:?}",
        read.source
    );
    assert_eq!(
        read.value,
        release_2::Balance {
            cost: 40_000,
            revenue: 125_000
        },
        "fields swapped"
    );
    assert_eq!(new.runs(), 1);
    assert_eq!(redis.decode_failures(), 0);
}

#[tokio::test]
async fn a_value_with_a_skipped_optional_field_reads_back_from_redis() {
    let redis = RedisTier::connect(&redis_url(), &namespace("skipped"))
        .await
        .unwrap();
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let value = Annotated {
        revenue: 125_000,
        note: None,
        items: vec!["invoices".to_owned()],
    };
    let db = Returns::new(value.clone());
    let t1 = tenant("t1");
    assert!(
        fan_out
            .run(&t1, (&fresh_instance(&redis, &db),))
            .await
            .0
            .is_fresh()
    );
    // Another instance: from Redis, not a silent miss on every read.
    let (read,) = fan_out.run(&t1, (&fresh_instance(&redis, &db),)).await;
    assert!(
        matches!(read.source, Source::Cached { .. }),
        "{:?}",
        read.source
    );
    assert_eq!(read.value, value);
    assert_eq!(db.runs(), 1);
    assert_eq!(redis.decode_failures(), 0);
}

#[tokio::test]
async fn another_value_type_or_schema_version_never_reads_the_stored_value() {
    let (ns, redis, old) = release_1_stored("fingerprint").await;
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");

    // Another type under the same query name: its own key, its own value.
    let new = Returns::new(release_2::Balance {
        cost: 1,
        revenue: 2,
    });
    let (other_type,) = fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    assert!(other_type.is_fresh(), "{:?}", other_type.source);
    assert_eq!(other_type.value, new.value);
    assert_eq!(value_keys(&ns).await.len(), 2);

    // The same type under another schema version: the same.
    let bumped = fresh_instance(&redis, &old).schema(1);
    let (other_version,) = fan_out.run(&t1, (&bumped,)).await;
    assert!(other_version.is_fresh(), "{:?}", other_version.source);
    assert_eq!(old.runs(), 2);
    // Each version reads its own.
    for version in [0, 1] {
        let (read,) = fan_out
            .run(&t1, (&fresh_instance(&redis, &old).schema(version),))
            .await;
        assert!(
            matches!(read.source, Source::Cached { .. }),
            "{:?}",
            read.source
        );
    }
    assert_eq!((old.runs(), new.runs()), (2, 1));
    assert_eq!(
        redis.decode_failures(),
        0,
        "no bytes of another type were read"
    );
}

#[tokio::test]
async fn incompatible_bytes_under_the_same_key_are_a_counted_miss_with_one_warning() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (ns, redis, _old) = release_1_stored("incompatible").await;
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");
    let [old_key] = <[String; 1]>::try_from(value_keys(&ns).await).unwrap();
    let old_bytes = stored_bytes(&old_key).await;

    // Release 2 renamed `cost` without bumping the schema version.
    let renamed = release_2::Renamed {
        revenue: 7,
        costs: 8,
    };
    let new = Returns::new(renamed.clone());
    fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    as_if_one_type(&ns, &old_bytes).await;
    let (read,) = fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    assert!(read.is_fresh(), "a miss: the query ran: {:?}", read.source);
    assert_eq!(read.value, renamed);
    assert_eq!(new.runs(), 2);
    assert_eq!(redis.decode_failures(), 1);
    assert_eq!(decode_warnings(&capture), 1, "{:#?}", capture.events());

    // Bytes that are not even MessagePack: a miss too; counted, and
    // logged at DEBUG (one WARN per 30 s).
    as_if_one_type(&ns, b"\xc1 not a value").await;
    let (read,) = fan_out.run(&t1, (&fresh_instance(&redis, &new),)).await;
    assert!(read.is_fresh(), "{:?}", read.source);
    assert_eq!(read.value, renamed);
    assert_eq!(redis.decode_failures(), 2);
    assert_eq!(decode_warnings(&capture), 1);
    let debug = capture
        .events()
        .iter()
        .filter(|e| {
            e.level == Level::DEBUG
                && e.field("query") == Some("balance")
                && e.field("error").is_some()
        })
        .count();
    assert_eq!(debug, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn forgotten_tenants_free_their_memory_and_never_get_a_value_of_an_invalidated_generation() {
    let mut own = OwnRedis::start();
    let ns = namespace("forget");
    // A 25 ms check: generations are remembered for 60 checks, 1.5 s.
    let check = Duration::from_millis(25);
    let redis_a = own.connect(&ns).await.generation_check(check);
    let redis_b = own.connect(&ns).await.generation_check(check);
    let db = Revenue::new(1);
    let cache_a = SharedCache::new(&QueryCache::new(100), &redis_a);
    let cache_b = SharedCache::new(&QueryCache::new(1_000), &redis_b);
    let b = SharedCached::new(db.clone(), &cache_b, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));

    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let before_t1 = fan_out.run(&t1, (&b,)).await.0.value;
    let before_t2 = fan_out.run(&t2, (&b,)).await.0.value;
    let started = Instant::now();
    for i in 0..50 {
        fan_out.run(&tenant(&format!("other{i}")), (&b,)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "too slow to test"
    );
    assert_eq!(cache_b.remembered_tenants(), 52);

    // Past the memory: the next new tenant sweeps the others away. Their
    // values are still in B's in-process tier (30 s TTL).
    sleep(Duration::from_millis(1_600)).await;
    fan_out.run(&tenant("newcomer"), (&b,)).await;
    assert_eq!(cache_b.remembered_tenants(), 1);

    // Both invalidated elsewhere.
    cache_a.invalidate_tenant(&t1).await.unwrap();
    cache_a.invalidate_tenant(&t2).await.unwrap();

    // Redis up: B reads t1's new generation and recomputes.
    let (after,) = fan_out.run(&t1, (&b,)).await;
    assert!(after.is_fresh(), "{:?}", after.source);
    assert_ne!(after.value.run, before_t1.run);

    // Redis down: t2's generation is unknown; B does not fall back to the
    // value it holds from before the invalidation.
    own.kill();
    let (after,) = fan_out.run(&t2, (&b,)).await;
    assert!(after.is_fresh(), "{:?}", after.source);
    assert_ne!(after.value.run, before_t2.run);
    // A remembered tenant keeps its in-process values through the outage.
    let (kept,) = fan_out.run(&t1, (&b,)).await;
    assert!(
        matches!(kept.source, Source::Cached { .. }),
        "{:?}",
        kept.source
    );
}

/// How Redis goes away in [`redis_lost_while_waiting_on_another_instances_lock`].
#[derive(Clone, Copy, Debug)]
enum Loss {
    Killed,
    Hung,
}

/// Instance A holds a key's lock for its slow query; ten callers on
/// instance B wait for A's value (lock wait 2 s) when Redis goes away. B
/// stops waiting at its first failed call and runs the query once for all
/// ten: no caller waits out the lock wait, none gets an error, and each
/// tier logs one WARN.
async fn redis_lost_while_waiting_on_another_instances_lock(loss: Loss) {
    let capture = Capture::default();
    let _guard = capture.install();
    let ns = namespace("lost-while-waiting");
    let mut own = None;
    let hang = Arc::new(AtomicBool::new(false));
    let url = match loss {
        Loss::Killed => own.insert(OwnRedis::start()).url(),
        Loss::Hung => {
            let (upstream, _) = through_proxy(&redis_url(), 0);
            let port = hanging_proxy(upstream, Arc::clone(&hang)).await;
            through_proxy(&redis_url(), port).1
        }
    };
    let connect = || async {
        match &own {
            Some(own) => own.connect(&ns).await,
            None => RedisTier::connect(&url, &ns).await.unwrap(),
        }
    };
    let (redis_a, redis_b) = (connect().await, connect().await);
    let (db_a, db_b) = (Revenue::new(500), Revenue::new(QUERY_MS));
    let a = instance(&redis_a, &db_a, policy());
    let b = instance(&redis_b.lock_wait(Duration::from_secs(2)), &db_b, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    let t1 = tenant("t1");

    let computing = tokio::spawn({
        let (fan_out, t1) = (fan_out.clone(), t1.clone());
        async move { fan_out.run(&t1, (&a,)).await.0 }
    });
    sleep(Duration::from_millis(50)).await;
    let lose_at = Duration::from_millis(100);
    let started = Instant::now();
    let (waiters, ()) = tokio::join!(join_all((0..10).map(|_| fan_out.run(&t1, (&b,)))), async {
        sleep(lose_at).await;
        match loss {
            Loss::Killed => own.as_mut().unwrap().kill(),
            Loss::Hung => hang.store(true, Ordering::SeqCst),
        }
    });
    let slowest = started.elapsed();

    // Lost, then at most one poll interval and one call timeout, then B's
    // own query.
    let limit = lose_at
        + Duration::from_millis(10)
        + CALL_TIMEOUT
        + Duration::from_millis(QUERY_MS)
        + SLACK;
    println!("Redis {loss:?} while waiting: slowest of ten callers {slowest:?} (limit {limit:?})");
    assert!(slowest <= limit, "{slowest:?} > {limit:?}");
    let fresh = waiters.iter().filter(|(o,)| o.is_fresh()).count();
    for (outcome,) in &waiters {
        assert!(
            matches!(outcome.source, Source::Fresh | Source::Cached { .. }),
            "{:?}",
            outcome.source
        );
        assert_eq!(outcome.value.tenant, "t1");
    }
    assert_eq!(
        (fresh, db_b.runs()),
        (1, 1),
        "one execution for ten callers"
    );

    // A finishes its query; storing it fails quietly.
    let computed = computing.await.unwrap();
    assert!(computed.is_fresh(), "{:?}", computed.source);
    assert_eq!(
        redis_warnings(&capture),
        2,
        "one WARN per tier: {:#?}",
        capture.events()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_redis_killed_while_waiting_on_another_instances_lock_ends_the_wait() {
    redis_lost_while_waiting_on_another_instances_lock(Loss::Killed).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_redis_hung_while_waiting_on_another_instances_lock_ends_the_wait() {
    redis_lost_while_waiting_on_another_instances_lock(Loss::Hung).await;
}

/// A TCP proxy to `upstream` that holds every reply for `delay` before
/// passing it on: a Redis that is alive and answers, slowly.
async fn slow_proxy(upstream: String, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let never = Arc::new(AtomicBool::new(false));
                tokio::join!(
                    pass(client_read, server_write, never),
                    delayed(server_read, client_write, delay)
                );
            });
        }
    });
    port
}

async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let mut buffer = [0; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        sleep(delay).await;
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_but_alive_redis_costs_each_call_up_to_the_call_timeout() {
    // Every reply 30 ms late, under the 50 ms call timeout: nothing trips,
    // and a widget that is in neither tier pays every call in a row (the
    // tenant's generation, the value, the lock, the store), which is what
    // the README says: not "one call timeout", but up to four.
    const DELAY: Duration = Duration::from_millis(30);
    let capture = Capture::default();
    let _guard = capture.install();
    let (upstream, _) = through_proxy(&redis_url(), 0);
    let port = slow_proxy(upstream, DELAY).await;
    let (_, url) = through_proxy(&redis_url(), port);
    let ns = namespace("slow");
    let redis_a = RedisTier::connect(&url, &ns).await.unwrap();
    let redis_b = RedisTier::connect(&url, &ns).await.unwrap();
    let db = Revenue::new(QUERY_MS);
    let a = instance(&redis_a, &db, policy());
    let b = instance(&redis_b, &db, policy());
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));

    let started = Instant::now();
    let (missed,) = fan_out.run(&tenant("t0"), (&a,)).await;
    let miss = started.elapsed();
    assert!(missed.is_fresh(), "{:?}", missed.source);
    let query = Duration::from_millis(QUERY_MS);
    println!("slow Redis: a miss in both tiers took {miss:?}");
    assert!(miss >= query + 4 * DELAY, "{miss:?}: four calls in a row");
    assert!(miss <= query + 4 * CALL_TIMEOUT + SLACK, "{miss:?}");

    // The other instance finds it in Redis: its generation and the value.
    let started = Instant::now();
    let (shared,) = fan_out.run(&tenant("t0"), (&b,)).await;
    let hit = started.elapsed();
    assert!(matches!(shared.source, Source::Cached { .. }));
    println!("slow Redis: a hit in Redis took {hit:?}");
    assert!(hit >= 2 * DELAY, "{hit:?}: two calls in a row");
    assert!(hit <= 2 * CALL_TIMEOUT + SLACK, "{hit:?}");

    // Slow is not failing: no WARN, and the in-process tier answers at once.
    assert_eq!(redis_warnings(&capture), 0, "{:#?}", capture.events());
    let started = Instant::now();
    let (local,) = fan_out.run(&tenant("t0"), (&b,)).await;
    assert!(matches!(local.source, Source::Cached { .. }));
    assert!(started.elapsed() < DELAY, "{:?}", started.elapsed());
}
