//! Queries through `fanout::sqlx` dropped at random points (while checking
//! out, during `BEGIN`, mid-statement, mid-result, during `COMMIT`, or
//! after), against `pg_sleep` and against the real widget queries. After
//! every drop, every pooled connection is idle, outside any transaction,
//! with `statement_timeout` at its default, and the next query is correct.
//!
//! The drop points come from a seeded generator: the run prints its seed,
//! and `FANOUT_DROP_SEED=N` repeats it.

use std::time::{Duration, Instant};

use fanout::{DashboardQuery, QueryContext, TenantId};
use sqlx::Row;

use crate::sqlx_widgets;
use crate::widgets::Mode;

/// splitmix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("FANOUT_DROP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_f00d);
        eprintln!("drop points: seed {seed} (FANOUT_DROP_SEED={seed} repeats this run)");
        // The helper's WARNs (a connection closed, a cancel that failed) in
        // the test's output.
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_test_writer()
            .try_init();
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Waits `micros` before the drop: spinning for short waits (so that the
/// drop can land inside a round trip of a tenth of a millisecond, while the
/// query's task runs on the other worker), sleeping for long ones.
async fn wait(micros: u64) {
    if micros < 3_000 {
        let until = Instant::now() + Duration::from_micros(micros);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    } else {
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

/// A deadline far away, near (the server's timeout may fire), or none.
fn context(rng: &mut Rng, tenant: TenantId) -> (QueryContext, &'static str) {
    let now = tokio::time::Instant::now();
    match rng.below(3) {
        0 => (
            QueryContext::new(tenant, Some(now + Duration::from_secs(10))),
            "far",
        ),
        1 => {
            let near = Duration::from_millis(rng.below(20));
            (QueryContext::new(tenant, Some(now + near)), "near")
        }
        _ => (QueryContext::new(tenant, None), "none"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_against_pg_sleep_leave_the_pool_of_one_clean() {
    const APP: &str = "fanout-test-sqlx-drops-sleep";
    let _alone = crate::wall_clock().await;
    let pool = crate::pool(APP, 1, Duration::from_secs(10)).await;
    let monitor = crate::monitor("fanout-test-sqlx-drops-sleep-monitor").await;
    let mut rng = Rng::from_env();
    let started = Instant::now();
    // (dropped, finished, failed): the loop must drop many queries and let
    // some finish. (Statements stopped by the server's timeout, rarer here,
    // are counted; `clean.rs` tests that path on its own.)
    let mut seen = (0, 0, 0);
    for i in 0..150 {
        let sleep_ms = rng.below(60);
        let (ctx, deadline) = context(&mut rng, TenantId::new("t1").unwrap());
        // Up to 3 ms spinning covers checkout, BEGIN, a short statement and
        // COMMIT; the rest lands mid-statement or after it, or after a near
        // deadline (statement_timeout 25 to 45 ms) stopped it on the server.
        let drop_after = if rng.below(2) == 0 {
            rng.below(3_000)
        } else {
            rng.below(80_000)
        };
        let query = sqlx::query("SELECT pg_sleep($1::float8 / 1000), 7").bind(sleep_ms as f64);
        let dropped = async {
            tokio::select! {
                biased;
                result = fanout::sqlx::fetch_all(&pool, &ctx, query) => Some(result),
                () = wait(drop_after) => None,
            }
        }
        .await;
        let what = format!(
            "case {i}: pg_sleep({sleep_ms} ms), deadline {deadline}, dropped after {drop_after} µs ({})",
            match &dropped {
                None => "dropped".to_owned(),
                Some(Ok(_)) => "finished".to_owned(),
                Some(Err(e)) => format!("failed: {e}"),
            }
        );
        match &dropped {
            None => seen.0 += 1,
            Some(Ok(rows)) => {
                seen.1 += 1;
                assert_eq!(rows[0].get::<i32, _>(1), 7, "{what}");
            }
            Some(Err(_)) => seen.2 += 1,
        }
        crate::assert_pool_clean(&pool, 1, &monitor, APP, &what).await;
    }
    eprintln!(
        "drop points, pg_sleep: 150 cases in {:?}: {} dropped, {} finished, {} stopped by the server",
        started.elapsed(),
        seen.0,
        seen.1,
        seen.2
    );
    assert!(
        seen.0 >= 30 && seen.1 >= 10,
        "the drops did not cover the cases: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_against_the_widgets_leave_every_pooled_connection_clean() {
    const APP: &str = "fanout-test-sqlx-drops-widgets";
    let _alone = crate::wall_clock().await;
    const SIZE: u32 = 2;
    let pool = crate::pool(APP, SIZE, Duration::from_secs(10)).await;
    let monitor = crate::monitor("fanout-test-sqlx-drops-widgets-monitor").await;
    let dashboard = sqlx_widgets::dashboard(&pool, |_| Mode::Normal);
    // What each widget answers for tenant 3, loaded once without drops.
    let tenant = crate::tenant(3);
    let ctx = || QueryContext::new(tenant.clone(), None);
    let child_count = dashboard.2.run(ctx()).await.unwrap();
    let recent = dashboard.4.run(ctx()).await.unwrap();
    let arrears = dashboard.5.run(ctx()).await.unwrap();

    let mut rng = Rng::from_env();
    let started = Instant::now();
    for i in 0..100 {
        let (ctx, deadline) = context(&mut rng, tenant.clone());
        let range = if rng.below(2) == 0 { 3_000 } else { 20_000 };
        let drop_after = rng.below(range);
        let widget = rng.below(6);
        let run = async {
            match widget {
                0 => dashboard.0.run(ctx).await.map(|_| ()),
                1 => dashboard.1.run(ctx).await.map(|_| ()),
                2 => dashboard.2.run(ctx).await.map(|_| ()),
                3 => dashboard.3.run(ctx).await.map(|_| ()),
                4 => dashboard.4.run(ctx).await.map(|_| ()),
                _ => dashboard.5.run(ctx).await.map(|_| ()),
            }
        };
        let outcome = tokio::select! {
            biased;
            result = run => format!("{result:?}"),
            () = wait(drop_after) => "dropped".to_owned(),
        };
        let what = format!(
            "case {i}: widget {widget}, deadline {deadline}, dropped after {drop_after} µs ({outcome})"
        );
        crate::assert_pool_clean(&pool, SIZE, &monitor, APP, &what).await;
        // The next queries are correct.
        let ctx = || QueryContext::new(tenant.clone(), None);
        match i % 3 {
            0 => assert_eq!(dashboard.2.run(ctx()).await.unwrap(), child_count, "{what}"),
            1 => assert_eq!(dashboard.4.run(ctx()).await.unwrap(), recent, "{what}"),
            _ => assert_eq!(dashboard.5.run(ctx()).await.unwrap(), arrears, "{what}"),
        }
    }
    eprintln!("drop points, widgets: 100 cases in {:?}", started.elapsed());
}
