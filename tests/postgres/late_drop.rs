//! A query dropped late: after its statement finished on the server, or at
//! a random point around the end of its statement. A cancel request sent
//! then would hit whatever the connection runs next (the helper's own
//! `COMMIT`, or the next pool user's statement).
//!
//! The finished-but-unpolled case is the one a stream feeding a slow
//! Server-Sent Events client or a parked shared cache load produces: the
//! answer is buffered, nobody polls, and the future is dropped later.

use std::time::Duration;

use fanout::{QueryContext, TenantId};
use futures_util::poll;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::clean_connection::assert_clean;

fn ctx(deadline: Option<Duration>) -> QueryContext {
    let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
    QueryContext::new(TenantId::new("t1").unwrap(), deadline)
}

/// Waits until the backend of `application` is idle after running `last`.
async fn wait_idle_after(monitor: &Client, application: &str, last: &str) {
    for _ in 0..400 {
        let idle: i64 = monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'idle' AND query = $2",
                &[&application, &last],
            )
            .await
            .unwrap()
            .get(0);
        if idle == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{application} never went idle after {last:?}");
}

#[tokio::test]
async fn a_finished_statement_dropped_unpolled_is_not_cancelled() {
    const APP: &str = "fanout-test-late-drop";
    let client = crate::connect(&crate::seeded(APP).await).await;
    let monitor = crate::connect(&crate::seeded("fanout-test-late-drop-monitor").await).await;
    let statement = client.prepare("SELECT 1").await.unwrap();
    // With a deadline (inside the helper's transaction) and without.
    for (deadline, last) in [
        (Some(Duration::from_secs(10)), "COMMIT"),
        (None, "SELECT 1"),
    ] {
        let ctx = ctx(deadline);
        let mut query = Box::pin(fanout::postgres::query(&client, &ctx, &statement, &[]));
        assert!(
            poll!(query.as_mut()).is_pending(),
            "answered before it was sent"
        );
        // The server is done, and the connection task has the answers.
        wait_idle_after(&monitor, APP, last).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(query);
        // A cancel sent by that drop would arrive while this runs.
        let row = client
            .query_one("SELECT 42 FROM pg_sleep(0.3)", &[])
            .await
            .unwrap_or_else(|e| {
                panic!("deadline {deadline:?}: the next statement was cancelled: {e:?}")
            });
        assert_eq!(row.get::<_, i32>(0), 42);
        assert_clean(&client, "a finished statement dropped unpolled").await;
    }
}

/// `now() = statement_timestamp()` (false inside a transaction),
/// `statement_timeout` and the backend's process id, by the simple
/// protocol; retried when a late cancel request stops it (SQLSTATE 57014,
/// the residual race the module docs describe), any other error fails.
async fn state(client: &Client) -> (bool, String, String) {
    for _ in 0..3 {
        let messages = match client
            .simple_query(
                "SELECT now() = statement_timestamp(), \
                 current_setting('statement_timeout'), pg_backend_pid()",
            )
            .await
        {
            Ok(messages) => messages,
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => continue,
            Err(e) => panic!("the check failed: {e:?}"),
        };
        let row = messages
            .iter()
            .find_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .expect("one row");
        let text = |i: usize| row.get(i).unwrap().to_owned();
        return (text(0) == "t", text(1), text(2));
    }
    panic!("the check was cancelled three times");
}

/// Dropped anywhere from before the statement starts to after it ends, on
/// a pool of one: the connection that comes back is always the same one,
/// outside any transaction, with `statement_timeout` at its default.
#[test]
fn random_drop_points_never_leave_a_transaction_open() {
    const APP: &str = "fanout-test-drop-points";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime
        .block_on(async { crate::pool(crate::seeded(APP).await, 1, Duration::from_secs(5)) });
    let pid = runtime.block_on(async { state(&pool.get().await.unwrap()).await.2 });
    let mut runner = TestRunner::new(Config {
        cases: 50,
        failure_persistence: None,
        ..Config::default()
    });
    let drops = (0_u64..=30, 10_u64..=30, any::<bool>());
    runner
        .run(&drops, |(drop_after, sleep_ms, with_deadline)| {
            runtime.block_on(async {
                let client = pool.get().await.unwrap();
                let statement = client
                    .prepare_cached("SELECT pg_sleep($1::float8 / 1000)")
                    .await
                    .unwrap();
                let ctx = ctx(with_deadline.then_some(Duration::from_secs(10)));
                let sleep_ms = sleep_ms as f64;
                let params: [&(dyn ToSql + Sync); 1] = [&sleep_ms];
                let query = fanout::postgres::query(&client, &ctx, &statement, &params);
                let _ = tokio::time::timeout(Duration::from_millis(drop_after), query).await;
                drop(client);

                let client = pool.get().await.unwrap();
                let (outside, timeout, backend) = state(&client).await;
                prop_assert_eq!(&backend, &pid, "the pool replaced its connection");
                prop_assert!(outside, "a transaction is still open");
                prop_assert_eq!(timeout, "0", "statement_timeout left set");
                Ok(())
            })
        })
        .unwrap();
}
