//! Timeouts stop work on the server, not only in the client: an abandoned
//! statement is gone from `pg_stat_activity` within 1 s of the fan-out
//! returning, and the next query on the same pooled connection answers at
//! once, on a clean connection.

use std::time::{Duration, Instant};

use fanout::{Failure, FanOut};
use tokio_postgres::Client;

use crate::widgets::{self, Mode};

/// Statements of `application` still running a `pg_sleep`.
async fn sleeping(monitor: &Client, application: &str) -> i64 {
    monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
            &[&application],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls until 1 s after `since` for no statement of `application` to
/// sleep; returns whether it got there.
async fn drained_within_a_second(monitor: &Client, application: &str, since: Instant) -> bool {
    while since.elapsed() < Duration::from_secs(1) {
        if sleeping(monitor, application).await == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn an_abandoned_query_stops_on_the_server_and_frees_its_connection() {
    const APP: &str = "fanout-test-timeouts";
    let config = crate::seeded(APP).await;
    let monitor = crate::connect(&crate::seeded("fanout-test-monitor").await).await;
    // One connection: the next query must reuse the abandoned one's.
    let pool = crate::pool(config, 1, Duration::from_secs(10));
    let dashboard = widgets::dashboard(&pool, |name| {
        if name == "arrears" {
            Mode::Slow
        } else {
            Mode::Normal
        }
    });
    let fan_out = FanOut::new()
        .timeout(Duration::from_millis(300))
        .deadline(Duration::from_secs(10));
    let tenant = crate::tenant(3);

    let (revenue, .., arrears) = fan_out.run(&tenant, widgets::refs(&dashboard)).await;
    let returned = Instant::now();
    assert!(revenue.is_fresh(), "{}", revenue.source);
    assert!(
        matches!(arrears.failure(), Some(Failure::TimedOut)),
        "{}",
        arrears.source
    );

    // Straight away, on the connection the abandoned statement used.
    let client = pool.get().await.unwrap();
    let row = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    let next_query = returned.elapsed();
    assert!(
        next_query < Duration::from_millis(500),
        "next query took {next_query:?}"
    );
    assert_eq!(row.get::<_, String>(0), "0", "the timeout was reset");
    assert!(
        drained_within_a_second(&monitor, APP, returned).await,
        "the slow statement still runs on the server"
    );
    let state: String = monitor
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE application_name = $1",
            &[&APP],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "idle", "not 'idle in transaction', nothing queued");
}

#[tokio::test]
async fn without_a_server_side_limit_the_statement_outlives_the_client() {
    // The control for the test above: drop a plain `client.query` on timeout
    // and PostgreSQL keeps running it.
    const APP: &str = "fanout-test-control";
    let client = crate::connect(&crate::seeded(APP).await).await;
    let monitor = crate::connect(&crate::seeded("fanout-test-monitor").await).await;
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        client.query("SELECT pg_sleep(30)", &[]),
    )
    .await;
    assert!(abandoned.is_err());
    assert!(
        !drained_within_a_second(&monitor, APP, Instant::now()).await,
        "the plain statement kept running"
    );
    monitor
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&APP],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_broken_query_falls_back_and_the_rest_of_the_dashboard_arrives() {
    let config = crate::seeded("fanout-test-broken").await;
    let pool = crate::pool(config, 6, Duration::from_secs(10));
    let dashboard = widgets::dashboard(&pool, |name| {
        if name == "outstanding" {
            Mode::Broken
        } else {
            Mode::Normal
        }
    });
    let fan_out = FanOut::new().timeout(Duration::from_secs(10));
    let (revenue, outstanding, children, invoices, payments, arrears) = fan_out
        .run(&crate::tenant(2), widgets::refs(&dashboard))
        .await;
    assert!(
        [
            &revenue.source,
            &children.source,
            &invoices.source,
            &payments.source,
            &arrears.source
        ]
        .iter()
        .all(|s| s.is_fresh())
    );
    assert_eq!(outstanding.value, widgets::Cents(0));
    assert_eq!(
        outstanding.source.to_string(),
        "fallback (error: relation \"no_such_table_outstanding\" does not exist)"
    );
}
