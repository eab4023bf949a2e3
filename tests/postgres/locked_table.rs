//! A widget's table locked by another session (`LOCK TABLE ... IN ACCESS
//! EXCLUSIVE MODE` in an open transaction): the widgets reading it time
//! out, their statements are gone from the server within 100 ms of the
//! fan-out returning, and the other widgets are fresh.
//!
//! Its own schema: a lock on the shared one would stall the other tests.

use std::time::{Duration, Instant};

use fanout::{Failure, FanOut};

use crate::widgets::{self, Mode};

const SCHEMA: &str = "fanout_test_locked";

#[tokio::test]
async fn a_locked_table_times_out_its_widgets_and_nothing_else() {
    const APP: &str = "fanout-test-locked";
    let _alone = crate::wall_clock().await;
    let url = crate::database_url();
    let config = crate::seeded_at(&url, SCHEMA, 2, APP).await;
    let monitor =
        crate::connect(&crate::seeded_at(&url, SCHEMA, 2, "fanout-test-monitor").await).await;
    let locker =
        crate::connect(&crate::seeded_at(&url, SCHEMA, 2, "fanout-test-locker").await).await;
    let pool = crate::pool(config, 6, Duration::from_secs(10));

    // Prepare every widget's statement on every connection first: preparing
    // takes the table's lock too, and is not under `fanout::postgres` (see
    // its docs), so a first `prepare_cached` would wait on the lock unseen.
    let connections: Vec<_> = futures_util::future::join_all((0..6).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for connection in &connections {
        for name in widgets::NAMES {
            let sql = crate::sql::named(crate::sql::QUERIES, name).unwrap();
            connection.prepare_cached(sql).await.unwrap();
        }
    }
    drop(connections);

    let dashboard = widgets::dashboard(&pool, |_| Mode::Normal);
    let fan_out = FanOut::new()
        .timeout(Duration::from_millis(300))
        .deadline(Duration::from_secs(5));
    let tenant = crate::tenant(1);

    // `children` is read by two widgets: child_count and recent_payments.
    locker
        .batch_execute("BEGIN; LOCK TABLE children IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (revenue, outstanding, children, invoices, payments, arrears) =
        fan_out.run(&tenant, widgets::refs(&dashboard)).await;
    let returned = Instant::now();
    let drained = crate::drained(&monitor, APP, "children", returned, Duration::from_secs(3)).await;
    locker.batch_execute("ROLLBACK").await.unwrap();

    for (name, outcome_source) in [
        ("child_count", &children.source),
        ("recent_payments", &payments.source),
    ] {
        assert!(
            matches!(outcome_source, fanout::Source::Fallback(Failure::TimedOut)),
            "{name}: {outcome_source}"
        );
    }
    for (name, source) in [
        ("total_revenue", &revenue.source),
        ("outstanding", &outstanding.source),
        ("invoice_stats", &invoices.source),
        ("arrears", &arrears.source),
    ] {
        assert!(source.is_fresh(), "{name}: {source}");
    }
    let drained = drained.expect("the blocked statements still wait on the lock 3 s later");
    eprintln!(
        "locked table: the blocked statements left the server {drained:?} after the fan-out returned"
    );
    assert!(
        drained <= Duration::from_millis(100),
        "the blocked statements waited on for {drained:?}"
    );
}
