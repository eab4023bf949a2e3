//! Hang-ups mid-statement (issue 9, item 4): a query future from
//! `fanout::postgres` dropped before its statement completes cancels the
//! statement on the server at once, so the pool never hands on a
//! connection that is still busy.
//!
//! The control, a plain `client.query` dropped the same way and still
//! running on the server a second later, is
//! `timeouts::without_a_server_side_limit_the_statement_outlives_the_client`.

use std::time::{Duration, Instant};

use fanout::{FanOut, QueryContext, TenantId};

use crate::widgets::{self, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hang_ups_leave_no_statement_running_and_the_pool_answers_at_once() {
    const APP: &str = "fanout-test-hang-up";
    let _alone = crate::wall_clock().await;
    let config = crate::seeded(APP).await;
    let monitor = crate::connect(&crate::seeded("fanout-test-monitor").await).await;
    let pool = crate::pool(config, 10, Duration::from_secs(10));
    // The arrears widget sleeping 30 s on the server, through the helper.
    let slow = widgets::dashboard(&pool, |_| Mode::Slow).5;
    let fan_out = FanOut::new().deadline(Duration::from_secs(2));
    let slow = std::sync::Arc::new(slow);

    let started = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|n| {
            let (fan_out, slow) = (fan_out.clone(), std::sync::Arc::clone(&slow));
            tokio::spawn(async move { fan_out.run(&crate::tenant(n + 1), (&*slow,)).await })
        })
        .collect();
    // All ten statements on the server, one per pooled connection.
    while crate::active(&monitor, APP, "pg_sleep(30)").await < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the statements never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200).saturating_sub(started.elapsed())).await;

    // Hang up: the tasks' futures are dropped mid-statement.
    for client in &clients {
        client.abort();
    }
    for client in clients {
        assert!(client.await.unwrap_err().is_cancelled());
    }
    let hung_up = Instant::now();

    let drained = crate::drained(
        &monitor,
        APP,
        "pg_sleep(30)",
        hung_up,
        Duration::from_secs(3),
    )
    .await
    .expect("statements still running 3 s after the hang-ups");
    eprintln!("hang-up: the last abandoned statement left the server {drained:?} after the drops");
    assert!(
        drained <= Duration::from_millis(100),
        "abandoned statements ran on for {drained:?} after the hang-ups"
    );

    // The next user, on a connection one of the hung-up clients used.
    let next = Instant::now();
    let client = pool.get().await.unwrap();
    let row = client.query_one("SELECT 42", &[]).await.unwrap();
    let next_query = next.elapsed();
    eprintln!("hang-up: the next query on the pool took {next_query:?}");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(
        next_query < Duration::from_secs(1),
        "the next query waited {next_query:?}"
    );
}

#[test]
fn a_query_dropped_outside_a_runtime_does_not_panic_and_the_server_still_stops_it() {
    const APP: &str = "fanout-test-hang-up-no-runtime";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Leaked: the future borrows them and outlives the block that made them.
    let (client, statement) = runtime.block_on(async {
        let client = crate::connect(&crate::seeded(APP).await).await;
        let statement = client.prepare("SELECT pg_sleep(30)").await.unwrap();
        (
            &*Box::leak(Box::new(client)),
            &*Box::leak(Box::new(statement)),
        )
    });
    let ctx: &QueryContext = Box::leak(Box::new(runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        QueryContext::new(TenantId::new("t1").unwrap(), Some(deadline))
    })));
    let mut query = Box::pin(fanout::postgres::query(client, ctx, statement, &[]));
    let started = Instant::now();
    runtime.block_on(async {
        let running = tokio::time::timeout(Duration::from_millis(100), &mut query).await;
        assert!(running.is_err(), "the statement sleeps 30 s");
    });

    // No runtime here: no cancel can be sent, and none is attempted.
    drop(query);

    // The server-side timeout (300 ms + grace) still stops it.
    runtime.block_on(async {
        let row = client.query_one("SELECT 42", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "waited {elapsed:?} behind pg_sleep(30)"
    );
}
