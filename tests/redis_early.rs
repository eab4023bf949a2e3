//! Early refresh ("XFetch") of the Redis tier, against a real Redis
//! (`REDIS_URL`, or a throw-away one of this test binary).
//!
//! The steady-read tests run on the wall clock (several instances, one
//! Redis); their margins are wide so that a busy 2-core machine does not
//! flip them: what they assert is structural (whether a new value was in
//! Redis before the old one expired, whether executions overlapped), never
//! how long a call took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout::cache::{CachePolicy, EarlyRefresh, QueryCache, RedisTier, SharedCache, SharedCached};
use fanout::{DashboardQuery, FanOut, QueryContext, Source, TenantId};
use serde::{Deserialize, Serialize};
// `REDIS_URL`, or a throw-away Redis started for this test binary.
use throwaway::redis_url;
use tokio::time::{Instant, sleep};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A namespace no other test (or earlier run) uses.
fn namespace(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("fanout-test:{test}:{nanos}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Report {
    /// Which execution computed it (1, 2, ...).
    run: usize,
    total: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
struct Unavailable;

/// One execution: when it started and ended, wall-clock ms.
#[derive(Clone, Copy, Debug)]
struct Execution {
    started_ms: u64,
    ended_ms: u64,
}

/// A query with a latency that records its executions; clones (one per
/// instance) share the record: it is the database's.
#[derive(Clone)]
struct Slow {
    latency: Duration,
    executions: Arc<Mutex<Vec<Execution>>>,
    fail: Arc<AtomicBool>,
}

impl Slow {
    fn new(latency: Duration) -> Self {
        Self {
            latency,
            executions: Arc::default(),
            fail: Arc::default(),
        }
    }

    fn executions(&self) -> Vec<Execution> {
        self.executions.lock().unwrap().clone()
    }
}

impl DashboardQuery for Slow {
    type Output = Report;
    type Error = Unavailable;

    fn name(&self) -> &'static str {
        "slow_report"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<Report, Unavailable> {
        let started_ms = now_ms();
        sleep(self.latency).await;
        let mut executions = self.executions.lock().unwrap();
        executions.push(Execution {
            started_ms,
            ended_ms: now_ms(),
        });
        if self.fail.load(Ordering::SeqCst) {
            return Err(Unavailable);
        }
        Ok(Report {
            run: executions.len(),
            total: 125_000,
        })
    }

    fn fallback(&self) -> Report {
        Report { run: 0, total: 0 }
    }
}

const INSTANCES: usize = 3;
const TTL: Duration = Duration::from_secs(3);
const LATENCY: Duration = Duration::from_millis(300);

/// What the readers saw.
#[derive(Debug, Default)]
struct Reads {
    fresh: usize,
    cached: usize,
    other: Vec<String>,
}

/// `INSTANCES` instances, each with its own in-process cache and Redis
/// connection, reading one key every 50 ms for `span` after a first value
/// is in place; the lock wait is long (5 s) so that no instance ever runs
/// the query beside the lock holder.
async fn steady_reads(test: &str, early: EarlyRefresh, span: Duration) -> (Slow, Reads) {
    let ns = namespace(test);
    let db = Slow::new(LATENCY);
    let policy = CachePolicy::ttl(TTL);
    let mut instances = Vec::new();
    for i in 0..INSTANCES {
        let redis = RedisTier::connect(&redis_url(), &ns)
            .await
            .unwrap()
            .lock_wait(Duration::from_secs(5))
            // Generous: the readers' calls share two busy cores.
            .call_timeout(Duration::from_millis(500));
        let cache = SharedCache::new(&QueryCache::new(100), &redis);
        let early = match i {
            0 => early.clone(),
            // Each instance its own seeded source: runs repeat as closely as
            // the clock lets them.
            _ => EarlyRefresh::new(early.beta()).unwrap().seed(i as u64),
        };
        instances.push(Arc::new(
            SharedCached::new(db.clone(), &cache, policy).early_refresh(early),
        ));
    }
    let tenant = TenantId::new("t1").unwrap();
    let fan_out = FanOut::new();
    // The first value, before the readers start (their first reads would
    // otherwise wait on it, as on any miss).
    let (first,) = fan_out.run(&tenant, (&*instances[0],)).await;
    assert!(first.is_fresh(), "{:?}", first.source);

    let until = Instant::now() + span;
    let readers = instances.iter().map(|query| {
        let (query, tenant, fan_out) = (Arc::clone(query), tenant.clone(), fan_out.clone());
        tokio::spawn(async move {
            let mut reads = Reads::default();
            while Instant::now() < until {
                let (outcome,) = fan_out.run(&tenant, (&*query,)).await;
                match outcome.source {
                    Source::Fresh => reads.fresh += 1,
                    Source::Cached { age } if age < TTL => reads.cached += 1,
                    other => reads.other.push(format!("{other:?}")),
                }
                sleep(Duration::from_millis(50)).await;
            }
            reads
        })
    });
    let mut all = Reads::default();
    for reads in futures_util::future::join_all(readers).await {
        let reads = reads.unwrap();
        all.fresh += reads.fresh;
        all.cached += reads.cached;
        all.other.extend(reads.other);
    }
    all.fresh += 1; // the first value
    (db, all)
}

/// The executions never overlapped: one instance at a time.
fn assert_one_at_a_time(executions: &[Execution]) {
    for pair in executions.windows(2) {
        assert!(
            pair[1].started_ms >= pair[0].ended_ms,
            "overlapping executions: {executions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_early_refresh_one_instance_recomputes_before_expiry_and_nobody_waits() {
    // Beta 2 and a 300 ms query: a read refreshes with odds
    // e^(−time left / 600 ms); at ~60 reads/s, a refresh is all but certain
    // (misses ~1e-6; at a quarter of that rate, ~1e-3) before 700 ms remain,
    // more than twice the query's time: the new value is in Redis before
    // the old one expires, so no read ever finds it expired.
    let early = EarlyRefresh::new(2.0).unwrap().seed(0);
    let (db, reads) = steady_reads("early", early, Duration::from_secs(8)).await;
    let executions = db.executions();
    println!("early refresh: {reads:?}, executions {executions:?}");

    assert!(reads.other.is_empty(), "{reads:?}");
    // The value was recomputed within the 8 s, 3 s TTL: at least twice.
    assert!(executions.len() >= 3, "{executions:?}");
    // Every execution served the read that ran it, and only that one; the
    // other reads were all served from a cache, within the TTL.
    assert_eq!(reads.fresh, executions.len(), "{reads:?}");
    assert_one_at_a_time(&executions);
    // Each new value was stored before the one it replaced expired, so no
    // read found the key expired (and waited on the lock holder): the only
    // waits there are.
    for pair in executions.windows(2) {
        let expired_at = pair[0].ended_ms + TTL.as_millis() as u64;
        assert!(
            pair[1].ended_ms < expired_at,
            "a value expired before its refresh: {executions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_early_refresh_a_value_is_recomputed_only_once_expired() {
    let (db, reads) = steady_reads("off", EarlyRefresh::OFF, Duration::from_secs(7)).await;
    let executions = db.executions();
    println!("no early refresh: {reads:?}, executions {executions:?}");

    assert!(reads.other.is_empty(), "{reads:?}");
    assert!(executions.len() >= 2, "{executions:?}");
    assert_one_at_a_time(&executions);
    // As before: each execution starts only once the last value expired
    // (allowing the millisecond the codec rounds to).
    for pair in executions.windows(2) {
        let expired_at = pair[0].ended_ms + TTL.as_millis() as u64;
        assert!(
            pair[1].started_ms + 2 >= expired_at,
            "recomputed before expiry: {executions:?}"
        );
    }
}

async fn redis_command<T: redis::FromRedisValue>(command: &mut redis::Cmd) -> T {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut connection).await.unwrap()
}

async fn only_value_key(ns: &str) -> String {
    let keys: Vec<String> = redis_command(redis::cmd("KEYS").arg(format!("{ns}:v2:*"))).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// One instance that stored a value computed in 50 ms; the namespace, the
/// tier and the query (its executions count).
async fn one_value_stored(test: &str) -> (String, RedisTier, Slow) {
    let ns = namespace(test);
    let redis = RedisTier::connect(&redis_url(), &ns).await.unwrap();
    let db = Slow::new(Duration::from_millis(50));
    let writer = SharedCached::new(
        db.clone(),
        &SharedCache::new(&QueryCache::new(100), &redis),
        CachePolicy::ttl(Duration::from_secs(60)),
    );
    let (outcome,) = FanOut::new()
        .run(&TenantId::new("t1").unwrap(), (&writer,))
        .await;
    assert!(outcome.is_fresh());
    (ns, redis, db)
}

/// An instance that refreshes on almost every read (beta 1e9: a 50 ms
/// computation is refreshed up to years ahead), reading once.
async fn eager_read(redis: &RedisTier, db: &Slow) -> Source {
    let reader = SharedCached::new(
        db.clone(),
        &SharedCache::new(&QueryCache::new(100), redis),
        CachePolicy::ttl(Duration::from_secs(60)),
    )
    .early_refresh(EarlyRefresh::new(1e9).unwrap().seed(5));
    let (outcome,) = FanOut::new()
        .run(&TenantId::new("t1").unwrap(), (&reader,))
        .await;
    assert_eq!(outcome.value.total, 125_000);
    outcome.source
}

#[tokio::test]
async fn a_value_this_build_stores_reads_in_an_older_build_and_refreshes_early_here() {
    let (ns, redis, db) = one_value_stored("layout-new").await;
    let bytes: Vec<u8> = redis_command(redis::cmd("GET").arg(only_value_key(&ns).await)).await;
    // What a `v2` build without computation times does with it:
    // `rmp_serde::from_slice::<(u64, T)>`, which reads the array and stops.
    let (computed_at_ms, old_read) = rmp_serde::from_slice::<(u64, Report)>(&bytes).unwrap();
    assert_eq!(
        old_read,
        Report {
            run: 1,
            total: 125_000
        }
    );
    assert!(computed_at_ms <= now_ms());
    // This build knows it took 50 ms: an eager reader refreshes it.
    assert!(matches!(eager_read(&redis, &db).await, Source::Fresh));
    assert_eq!(db.executions().len(), 2);
    assert_eq!(redis.decode_failures(), 0);
}

#[tokio::test]
async fn a_value_without_a_computation_time_is_never_refreshed_early_and_reads_without_error() {
    let (ns, redis, db) = one_value_stored("layout-old").await;
    // Rewrite the value as a build without computation times stores it.
    let key = only_value_key(&ns).await;
    let old = rmp_serde::to_vec_named(&(
        now_ms(),
        Report {
            run: 1,
            total: 125_000,
        },
    ))
    .unwrap();
    redis_command::<()>(redis::cmd("SET").arg(&key).arg(old).arg("KEEPTTL")).await;
    for _ in 0..20 {
        assert!(
            matches!(eager_read(&redis, &db).await, Source::Cached { .. }),
            "an old value was refreshed early"
        );
    }
    assert_eq!(db.executions().len(), 1);
    assert_eq!(redis.decode_failures(), 0);
}

#[tokio::test]
async fn an_instance_that_finds_the_lock_held_serves_its_value_at_once() {
    let (ns, redis, db) = one_value_stored("lock-held").await;
    // Another instance is refreshing: it holds the key's lock.
    let key = only_value_key(&ns).await;
    let lock = key.replacen(":v2:", ":lock:", 1);
    redis_command::<()>(
        redis::cmd("SET")
            .arg(&lock)
            .arg("someone-else")
            .arg("PX")
            .arg(60_000),
    )
    .await;
    let started = Instant::now();
    for _ in 0..20 {
        assert!(matches!(
            eager_read(&redis, &db).await,
            Source::Cached { .. }
        ));
    }
    assert_eq!(db.executions().len(), 1);
    // Not a timing assertion on one call: twenty reads that each waited
    // for the lock (5 s by default) would take minutes.
    assert!(started.elapsed() < Duration::from_secs(20));
    // Once the other instance stores a newer value, an eager reader serves
    // that one, and does not recompute it.
    redis_command::<()>(redis::cmd("DEL").arg(&lock)).await;
    let cache = SharedCache::new(&QueryCache::new(100), &redis);
    let policy = CachePolicy::ttl(Duration::from_secs(60));
    let reader = SharedCached::new(db.clone(), &cache, policy)
        .early_refresh(EarlyRefresh::new(1e9).unwrap().seed(6));
    let tenant = TenantId::new("t1").unwrap();
    // The lock is free: the reader refreshes, and keeps run 2 in its
    // in-process tier…
    let (outcome,) = FanOut::new().run(&tenant, (&reader,)).await;
    assert!(outcome.is_fresh(), "{:?}", outcome.source);
    assert_eq!(outcome.value.run, 2);
    assert_eq!(db.executions().len(), 2);
    // …and another instance stores a newer value since.
    let newer = {
        let mut bytes = rmp_serde::to_vec_named(&(
            now_ms() + 1,
            Report {
                run: 9,
                total: 125_000,
            },
        ))
        .unwrap();
        rmp_serde::encode::write(&mut bytes, &50_u64).unwrap();
        bytes
    };
    redis_command::<()>(redis::cmd("SET").arg(&key).arg(newer).arg("KEEPTTL")).await;
    let (outcome,) = FanOut::new().run(&tenant, (&reader,)).await;
    assert!(
        matches!(outcome.source, Source::Cached { .. }),
        "{:?}",
        outcome.source
    );
    assert_eq!(outcome.value.run, 9);
    assert_eq!(db.executions().len(), 2);
    // It replaced run 2 in the reader's in-process tier.
    let off = SharedCached::new(db.clone(), &cache, policy).early_refresh(EarlyRefresh::OFF);
    let (outcome,) = FanOut::new().run(&tenant, (&off,)).await;
    assert_eq!(outcome.value.run, 9);
    assert_eq!(db.executions().len(), 2);
}

#[tokio::test]
async fn a_failed_early_refresh_serves_the_cached_value_and_frees_the_lock() {
    let (_ns, redis, db) = one_value_stored("refresh-fails").await;
    db.fail.store(true, Ordering::SeqCst);
    for attempt in 2..=4 {
        // The read decides to refresh, takes the lock, the query fails:
        // the value read is served, within its TTL.
        let source = eager_read(&redis, &db).await;
        assert!(matches!(source, Source::Cached { .. }), "{source:?}");
        // The lock was released, not left to lapse: the next read tries
        // again at once.
        assert_eq!(db.executions().len(), attempt);
    }
    db.fail.store(false, Ordering::SeqCst);
    assert!(matches!(eager_read(&redis, &db).await, Source::Fresh));
}

/// A query that counts its runs and takes 200 ms.
#[derive(Clone)]
struct Counted200 {
    runs: Arc<std::sync::atomic::AtomicUsize>,
}

impl DashboardQuery for Counted200 {
    type Output = u64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "slow_refreshed"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<u64, std::io::Error> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        sleep(Duration::from_millis(200)).await;
        Ok(n as u64)
    }

    fn fallback(&self) -> u64 {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_through_redis_recomputes_before_the_ttl_and_nobody_waits() {
    // Refresh-ahead in front of the shared tier: a reload must not take
    // Redis's copy of the very value it is replacing; it recomputes (under
    // the key's lock), so no read after the first ever waits for the query.
    let redis = RedisTier::connect(&redis_url(), &namespace("refresh-ahead"))
        .await
        .unwrap();
    let cache = SharedCache::new(&QueryCache::new(100), &redis);
    let query = Counted200 {
        runs: Arc::default(),
    };
    let policy = CachePolicy::ttl(Duration::from_secs(2)).refresh_after(Duration::from_millis(500));
    let shared = SharedCached::new(query.clone(), &cache, policy);
    let (fan_out, tenant) = (FanOut::new(), TenantId::new("tenant-r").unwrap());
    let started = Instant::now();
    let mut waits = Vec::new();
    let mut refreshing = 0;
    let mut first = true;
    while started.elapsed() < Duration::from_secs(7) {
        let begun = Instant::now();
        let (outcome,) = fan_out.run(&tenant, (&shared,)).await;
        if !first && begun.elapsed() >= Duration::from_millis(150) {
            waits.push((
                started.elapsed(),
                begun.elapsed(),
                outcome.source.to_string(),
            ));
        }
        first = false;
        match outcome.source {
            Source::Refreshing { age } => {
                refreshing += 1;
                assert!(age < Duration::from_secs(2), "{age:?}");
            }
            Source::Cached { age } => assert!(age < Duration::from_secs(2), "{age:?}"),
            Source::Fresh => {}
            other => panic!("{other:?}"),
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        waits.is_empty(),
        "reads that waited for the query: {waits:?}"
    );
    assert!(refreshing > 0);
    // TTL alone would run it once per 2 s (4 times in 7 s); a reload every
    // ~0.7 s (due at 0.5 s, 0.2 s to run) gives about ten.
    let runs = query.runs.load(Ordering::SeqCst);
    assert!((6..=14).contains(&runs), "{runs} runs in 7 s");
}
