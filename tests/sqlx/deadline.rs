//! A statement past its deadline stops on the server within 100 ms of the
//! fan-out returning, and the pool's only connection answers the next
//! query at once; a hang-up without a deadline is cancelled too.

use std::time::{Duration, Instant};

use fanout::{Failure, FanOut, Source};
use sqlx::Row;

use crate::sqlx_widgets;
use crate::widgets::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_deadline_the_statement_stops_on_the_server_and_the_pool_of_one_answers() {
    const APP: &str = "fanout-test-sqlx-deadline";
    let _alone = crate::wall_clock().await;
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-deadline-monitor").await;
    // The arrears widget sleeping 30 s on the server.
    let slow = sqlx_widgets::dashboard(&pool, |_| Mode::Slow).5;
    let fan_out = FanOut::new().deadline(Duration::from_millis(400));

    let (arrears,) = fan_out.run(&crate::tenant(1), (&slow,)).await;
    let returned = Instant::now();
    assert!(
        matches!(arrears.source, Source::Fallback(Failure::DeadlineExceeded)),
        "{}",
        arrears.source
    );
    let drained = crate::drained(
        &monitor,
        APP,
        "pg_sleep(30)",
        returned,
        Duration::from_secs(3),
    )
    .await
    .expect("the statement still ran 3 s after the fan-out returned");
    eprintln!("deadline: the statement left the server {drained:?} after the fan-out returned");
    assert!(
        drained <= Duration::from_millis(100),
        "the statement ran on for {drained:?} after the fan-out returned"
    );

    // The pool's only connection: the next query answers at once.
    let next = Instant::now();
    let row = sqlx::query("SELECT 42").fetch_one(&pool).await.unwrap();
    let next_query = next.elapsed();
    eprintln!("deadline: the next query on the pool of one took {next_query:?}");
    assert_eq!(row.get::<i32, _>(0), 42);
    assert!(
        next_query < Duration::from_secs(1),
        "the next query waited {next_query:?}"
    );
    crate::assert_pool_clean(&pool, 1, &monitor, APP, "a deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_without_a_deadline_cancels_the_statement_on_the_server() {
    const APP: &str = "fanout-test-sqlx-hang-up";
    let _alone = crate::wall_clock().await;
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-hang-up-monitor").await;
    let slow = std::sync::Arc::new(sqlx_widgets::dashboard(&pool, |_| Mode::Slow).5);
    // No timeout, no deadline: only the drop can stop it.
    let client = {
        let slow = std::sync::Arc::clone(&slow);
        tokio::spawn(async move { FanOut::new().run(&crate::tenant(2), (&*slow,)).await })
    };
    let started = Instant::now();
    while crate::backends(&monitor, APP, "active", "pg_sleep(30)").await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the statement never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    let hung_up = Instant::now();
    let drained = crate::drained(
        &monitor,
        APP,
        "pg_sleep(30)",
        hung_up,
        Duration::from_secs(3),
    )
    .await
    .expect("the statement still ran 3 s after the hang-up");
    eprintln!("hang-up: the statement left the server {drained:?} after the drop");
    assert!(
        drained <= Duration::from_millis(100),
        "the statement ran on for {drained:?} after the hang-up"
    );
    crate::assert_pool_clean(&pool, 1, &monitor, APP, "a hang-up").await;
}
