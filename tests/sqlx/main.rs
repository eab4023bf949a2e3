//! `fanout::sqlx` against a real PostgreSQL, seeded by the tests themselves
//! (see `tests/pg`): the dashboard's six widgets over sqlx, the server-side
//! deadline, drops at random points, and a control showing what plain sqlx
//! does when dropped the same way.

#[allow(dead_code)] // its deadpool pool is the tokio-postgres tests'
#[path = "../../examples/dashboard/db.rs"]
mod db;
#[path = "../../examples/dashboard/seed.rs"]
mod seed;
#[path = "../../examples/dashboard/sql.rs"]
mod sql;
#[path = "../../examples/dashboard_sqlx/sqlx_db.rs"]
mod sqlx_db;
#[path = "../../examples/dashboard_sqlx/sqlx_widgets.rs"]
mod sqlx_widgets;
// The value types, and the tokio-postgres decoders `expected` uses.
#[allow(dead_code)]
#[path = "../../examples/dashboard/widgets.rs"]
mod widgets;

#[path = "../pg/mod.rs"]
mod pg;

pub use pg::{backends, drained, wall_clock};

mod accuracy;
mod clean;
mod control;
mod deadline;
mod drop_points;

use std::time::Duration;

use fanout::TenantId;
use sqlx::{PgPool, Row};
use tokio_postgres::Client;

/// A sqlx pool of `size` on the seeded schema, as `application`; callers
/// wait at most `wait` for a connection.
pub async fn pool(application: &str, size: u32, wait: Duration) -> PgPool {
    let config = pg::seeded(application).await;
    let options = sqlx_db::options(&config, pg::SCHEMA, application).unwrap();
    sqlx_db::pool(options, size, wait)
}

/// A tokio-postgres connection for watching the server.
pub async fn monitor(application: &str) -> Client {
    db::connect(&pg::seeded(application).await)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn tenant(n: u32) -> TenantId {
    TenantId::new(seed::tenant_id(n)).unwrap()
}

/// Checks out every connection of `pool` (`size` of them) at once and
/// fails the test unless each is idle on the server, outside any
/// transaction, with `statement_timeout` at its default, and answers a
/// query correctly. `after` says what just happened.
pub async fn assert_pool_clean(
    pool: &PgPool,
    size: u32,
    monitor: &Client,
    application: &str,
    after: &str,
) {
    let mut held = Vec::new();
    for _ in 0..size {
        let conn = tokio::time::timeout(Duration::from_secs(5), pool.acquire())
            .await
            .unwrap_or_else(|_| panic!("after {after}: a connection never came back"))
            .unwrap_or_else(|e| panic!("after {after}: no connection: {e}"));
        held.push(conn);
    }
    // Before anything runs on them: what the server shows busy (running
    // a statement, or inside a transaction).
    let busy: Vec<(i32, String, String)> = monitor
        .query(
            "SELECT pid, state, query FROM pg_stat_activity \
             WHERE application_name = $1 AND state <> 'idle'",
            &[&application],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    for conn in &mut held {
        // The simple protocol: one timestamp per statement, so
        // now() = statement_timestamp() exactly when no transaction is open.
        let row = sqlx::raw_sql(
            "SELECT now() = statement_timestamp(), current_setting('statement_timeout'), 40 + 2, \
             pg_backend_pid()",
        )
        .fetch_one(&mut **conn)
        .await
        .unwrap_or_else(|e| panic!("after {after}: the check failed: {e}"));
        assert!(
            row.get::<bool, _>(0),
            "after {after}: a transaction is open"
        );
        assert_eq!(
            row.get::<String, _>(1),
            "0",
            "after {after}: statement_timeout left set"
        );
        assert_eq!(row.get::<i32, _>(2), 42, "after {after}");
        // None of the pooled connections was busy when checked out. (A
        // connection the helper closed may still be shutting down on the
        // server: it is not in the pool.)
        let pid = row.get::<i32, _>(3);
        assert!(
            busy.iter().all(|(busy, ..)| *busy != pid),
            "after {after}: a pooled connection was busy on the server: {busy:?}"
        );
    }
}

/// The helpers' futures are `Send`, so a widget built on them runs in a
/// spawned task or a multi-threaded server.
#[allow(dead_code)] // checked at compile time, never called
fn helpers_are_send(pool: &PgPool, ctx: &fanout::QueryContext) {
    fn send<T: Send>(_: T) {}
    send(fanout::sqlx::fetch_all(pool, ctx, sqlx::query("SELECT 1")));
    send(fanout::sqlx::fetch_one(pool, ctx, sqlx::query("SELECT 1")));
    send(fanout::sqlx::fetch_optional(
        pool,
        ctx,
        sqlx::raw_sql("SELECT 1"),
    ));
}
