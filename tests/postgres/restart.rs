//! PostgreSQL stopped mid-load (`pg_ctl stop -m immediate`) for three
//! seconds, then started again, under a steady stream of dashboards (one
//! every 50 ms, deadline 1 s, every widget cached with a short TTL and a
//! stale-if-error window): no dashboard outlives its deadline, none fails
//! or panics, during the outage every widget shows its last good value, and
//! after the restart the same pool serves fresh values again within two
//! seconds.
//!
//! On a private throw-away cluster (`throwaway::Postgres`), so the
//! shared one the other tests use keeps running.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::FanOut;
use fanout::cache::{CachePolicy, Cached, QueryCache};
use throwaway::Postgres;
use tokio::sync::Mutex;

use crate::widgets::{self, Mode};

const TENANTS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(1);
/// Wall-clock slack over the deadline: scheduling on a loaded 2-core CI
/// machine, not a tolerance the engine needs.
const SLACK: Duration = Duration::from_millis(150);
const OUTAGE: Duration = Duration::from_secs(3);

/// One dashboard of the stream: when it started (from the stream's start),
/// how long it took, and each widget's source and whether its value was
/// the tenant's real one.
struct Run {
    tenant: u32,
    started: Duration,
    took: Duration,
    widgets: Vec<(&'static str, String, bool)>,
}

impl Run {
    fn all(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.widgets.iter().all(|(_, source, _)| pred(source))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_survive_a_database_restart_and_the_pool_recovers() {
    let _alone = crate::wall_clock().await;
    let server = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("private cluster: {e}"));
    let server = Arc::new(Mutex::new(server));
    let url = server.lock().await.url().to_owned();
    let config = crate::seeded_at(&url, "fanout_test", TENANTS, "fanout-test-restart").await;
    let client = crate::connect(&config).await;
    // The example's tables are UNLOGGED, which crash recovery empties; a
    // real deployment's are logged. Referenced tables first: a logged table
    // cannot reference an unlogged one.
    client
        .batch_execute(
            "ALTER TABLE tenants SET LOGGED; ALTER TABLE parents SET LOGGED; \
             ALTER TABLE children SET LOGGED; ALTER TABLE invoices SET LOGGED; \
             ALTER TABLE payments SET LOGGED; CHECKPOINT",
        )
        .await
        .unwrap();
    let mut expected = Vec::new();
    for n in 1..=TENANTS {
        expected.push(crate::expected(&client, &crate::tenant(n)).await);
    }
    drop(client);
    let expected = Arc::new(expected);

    let pool = crate::pool(config, 6, Duration::from_millis(500));
    let cache = QueryCache::new(1_000);
    let policy =
        CachePolicy::ttl(Duration::from_millis(100)).stale_if_error(Duration::from_secs(60));
    let (a, b, c, d, e, f) = widgets::dashboard(&pool, |_| Mode::Normal);
    let dashboard = Arc::new((
        Cached::new(a, &cache, policy),
        Cached::new(b, &cache, policy),
        Cached::new(c, &cache, policy),
        Cached::new(d, &cache, policy),
        Cached::new(e, &cache, policy),
        Cached::new(f, &cache, policy),
    ));
    let fan_out = FanOut::new()
        .timeout(Duration::from_millis(500))
        .deadline(DEADLINE);

    let start = Instant::now();
    // The outage, on its own task: stop at 1.5 s, start again 3 s later.
    let outage = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let stopping = start.elapsed();
            let s = Arc::clone(&server);
            tokio::task::spawn_blocking(move || s.blocking_lock().stop_immediately())
                .await
                .unwrap()
                .unwrap();
            let stopped = start.elapsed();
            tokio::time::sleep(OUTAGE).await;
            let starting = start.elapsed();
            let s = Arc::clone(&server);
            tokio::task::spawn_blocking(move || s.blocking_lock().start_again())
                .await
                .unwrap()
                .unwrap();
            (stopping, stopped, starting, start.elapsed())
        })
    };

    // One dashboard every 50 ms until 4 s after the server is back.
    let mut runs = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut end = None;
    for i in 0u32.. {
        tick.tick().await;
        match end {
            None if outage.is_finished() => end = Some(Instant::now() + Duration::from_secs(4)),
            Some(end) if Instant::now() >= end => break,
            _ => {}
        }
        let (fan_out, dashboard, expected) = (
            fan_out.clone(),
            Arc::clone(&dashboard),
            Arc::clone(&expected),
        );
        runs.push(tokio::spawn(async move {
            let n = i % TENANTS + 1;
            let tenant = crate::tenant(n);
            let started = start.elapsed();
            let (a, b, c, d, e, f) = fan_out
                .run(
                    &tenant,
                    (
                        &dashboard.0,
                        &dashboard.1,
                        &dashboard.2,
                        &dashboard.3,
                        &dashboard.4,
                        &dashboard.5,
                    ),
                )
                .await;
            let took = start.elapsed() - started;
            let want = &expected[n as usize - 1];
            let widgets = vec![
                (
                    "total_revenue",
                    a.source.to_string(),
                    a.value == want.total_revenue,
                ),
                (
                    "outstanding",
                    b.source.to_string(),
                    b.value == want.outstanding,
                ),
                (
                    "child_count",
                    c.source.to_string(),
                    c.value == want.child_count,
                ),
                (
                    "invoice_stats",
                    d.source.to_string(),
                    d.value == want.invoice_stats,
                ),
                (
                    "recent_payments",
                    e.source.to_string(),
                    e.value == want.recent_payments,
                ),
                ("arrears", f.source.to_string(), f.value == want.arrears),
            ];
            Run {
                tenant: n,
                started,
                took,
                widgets,
            }
        }));
    }
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.expect("no dashboard panics"));
    }
    let (stopping, stopped, starting, restarted) = outage.await.unwrap();
    eprintln!(
        "restart: stop {stopping:?}..{stopped:?}, start {starting:?}..{restarted:?}; {} dashboards",
        results.len()
    );

    let slowest = results.iter().map(|r| r.took).max().unwrap();
    eprintln!("restart: the slowest dashboard took {slowest:?}");
    for run in &results {
        assert!(
            run.took <= DEADLINE + SLACK,
            "tenant {} at {:?} took {:?}: {:?}",
            run.tenant,
            run.started,
            run.took,
            run.widgets
        );
    }
    // From well after the first loads until the stop: values are real.
    for run in results
        .iter()
        .filter(|r| r.started > Duration::from_millis(500) && r.started < stopping)
    {
        assert!(
            run.widgets.iter().all(|w| w.2),
            "before the stop, at {:?}: {:?}",
            run.started,
            run.widgets
        );
    }
    // While the server is down: every widget its last good value, stale.
    let down: Vec<_> = results
        .iter()
        .filter(|r| r.started > stopped && r.started + r.took < starting)
        .collect();
    assert!(
        down.len() > 20,
        "only {} dashboards during the outage",
        down.len()
    );
    for run in &down {
        assert!(
            run.widgets
                .iter()
                .all(|(_, source, real)| source.starts_with("stale") && *real),
            "during the outage, at {:?}: {:?}",
            run.started,
            run.widgets
        );
    }
    // After the restart: fresh again within two seconds, and from then on.
    let first_fresh = results
        .iter()
        .filter(|r| r.started > restarted)
        .find(|r| r.all(|s| s == "fresh"))
        .map(|r| r.started - restarted);
    eprintln!("restart: first all-fresh dashboard {first_fresh:?} after the server was back");
    let first_fresh = first_fresh.expect("no all-fresh dashboard after the restart");
    assert!(
        first_fresh < Duration::from_secs(2),
        "fresh again only {first_fresh:?} after the restart"
    );
    let recovered = restarted + Duration::from_secs(2);
    let after: Vec<_> = results.iter().filter(|r| r.started > recovered).collect();
    assert!(
        after.len() > 10,
        "only {} dashboards after recovery",
        after.len()
    );
    for run in after {
        assert!(
            run.all(|s| s == "fresh" || s.starts_with("cached")) && run.widgets.iter().all(|w| w.2),
            "after recovery, at {:?}: {:?}",
            run.started,
            run.widgets
        );
    }
}
