//! The control: plain sqlx, dropped the way a fan-out drops a query,
//! leaves its connection busy or dirty. Each assertion here fails the day
//! sqlx cancels a dropped statement, or resets a released connection.
//!
//! Not shown: the `Pool::begin` race that returned a connection inside a
//! transaction (a drop between `BEGIN` going out and the `Transaction`
//! existing). Its window is a few microseconds on loopback; no test here
//! hits it reliably, so none claims to.

use std::time::{Duration, Instant};

use sqlx::{Executor, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sqlx_dropped_mid_statement_keeps_the_statement_and_the_connection_busy() {
    const APP: &str = "fanout-test-sqlx-control-busy";
    let _alone = crate::wall_clock().await;
    let pool = crate::pool(APP, 1, Duration::from_millis(300)).await;
    let monitor = crate::monitor("fanout-test-sqlx-control-monitor").await;
    // Open the connection first, so the drop below lands mid-statement.
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();

    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query("SELECT pg_sleep(3)").fetch_all(&pool),
    )
    .await;
    assert!(dropped.is_err(), "still running when dropped");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Half a second after the drop: still running on the server...
    let running = crate::backends(&monitor, APP, "active", "pg_sleep(3)").await;
    // ...and the pool's only connection is held until it ends.
    let started = Instant::now();
    let next = pool.acquire().await;
    let waited = started.elapsed();

    // Stop it, so the test does not leave 2.5 s of sleep behind.
    monitor
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&APP],
        )
        .await
        .unwrap();
    assert_eq!(running, 1, "plain sqlx cancelled the dropped statement");
    assert!(
        matches!(next, Err(sqlx::Error::PoolTimedOut)),
        "plain sqlx handed the connection on at once ({waited:?}): {:?}",
        next.map(|_| ())
    );
}

#[tokio::test]
async fn plain_sqlx_dropped_between_set_and_reset_returns_the_setting_to_the_pool() {
    const APP: &str = "fanout-test-sqlx-control-dirty";
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    // The by-hand recipe: a session setting around the statement.
    let by_hand = async {
        let mut conn = pool.acquire().await?;
        conn.execute("SET statement_timeout = 60000").await?;
        let rows = sqlx::query("SELECT pg_sleep(0.3)")
            .fetch_all(&mut *conn)
            .await;
        conn.execute("RESET statement_timeout").await?;
        rows
    };
    let dropped = tokio::time::timeout(Duration::from_millis(100), by_hand).await;
    assert!(dropped.is_err(), "still running when dropped");

    // The next user of the pool's only connection gets the setting.
    let row = sqlx::query("SELECT current_setting('statement_timeout')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        row.get::<String, _>(0),
        "1min",
        "the dropped query's setting did not reach the next user"
    );
}
