//! The seeded test database, shared by `tests/postgres` and
//! `tests/server.rs`: the dashboard example's schema with 20 tenants in the
//! schema `fanout_test`, seeded once and reused while the seed SQL is
//! unchanged. Needs `crate::db` and `crate::seed` (the example's modules).
//!
//! `scripts/test` starts one throw-away PostgreSQL for every test binary
//! and sets `DATABASE_URL`; without it each test binary starts its own
//! (`throwaway::database_url`). Without the server binaries the tests
//! fail, saying what to install. They never skip.

use tokio::sync::OnceCell;
use tokio_postgres::Config;

use crate::{db, seed};

pub const SCHEMA: &str = "fanout_test";
pub const TENANTS: u32 = 20;

/// The database config, pointed at the seeded schema (seeding it once per
/// test binary), with `application` as `application_name` so that
/// `pg_stat_activity` can tell tests apart.
pub async fn seeded(application: &str) -> Config {
    static SEEDED: OnceCell<()> = OnceCell::const_new();
    let url = database_url();
    let mut config = db::config(&url, SCHEMA).unwrap_or_else(|e| panic!("{e}"));
    SEEDED
        .get_or_init(|| async {
            let client = db::connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
            seed::ensure_seeded(&client, SCHEMA, TENANTS, false)
                .await
                .unwrap_or_else(|e| panic!("seeding failed: {e}"));
        })
        .await;
    config.application_name(application);
    config
}

/// Seeds `tenants` tenants into `schema` of the database at `url` (reusing
/// the seed when it is current) and returns the config pointed at it, with
/// `application` as `application_name`. For tests that must not share the
/// seeded schema: one that locks a table, one that runs its own cluster.
#[allow(dead_code)] // tests/postgres uses it; tests/server.rs, which shares this module, does not
pub async fn seeded_at(url: &str, schema: &str, tenants: u32, application: &str) -> Config {
    let mut config = db::config(url, schema).unwrap_or_else(|e| panic!("{e}"));
    let client = db::connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
    seed::ensure_seeded(&client, schema, tenants, false)
        .await
        .unwrap_or_else(|e| panic!("seeding {schema} failed: {e}"));
    config.application_name(application);
    config
}

pub use throwaway::database_url;

/// Backends of `application` whose state is `state` (a `LIKE` pattern)
/// and whose statement contains `text`.
#[allow(dead_code)] // for tests/postgres and tests/sqlx; tests/server.rs does not use it
pub async fn backends(
    monitor: &tokio_postgres::Client,
    application: &str,
    state: &str,
    text: &str,
) -> i64 {
    monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND state LIKE $2 AND strpos(query, $3) > 0",
            &[&application, &state, &text],
        )
        .await
        .unwrap()
        .get(0)
}

/// How long after `since` the last statement of `application` containing
/// `text` left the server, polling every 5 ms for up to `limit`; `None`
/// if one is still there after `limit`.
#[allow(dead_code)] // for tests/postgres and tests/sqlx; tests/server.rs does not use it
pub async fn drained(
    monitor: &tokio_postgres::Client,
    application: &str,
    text: &str,
    since: std::time::Instant,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    loop {
        if backends(monitor, application, "active", text).await == 0 {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Held by the tests that assert wall-clock bounds (hang-ups, the locked
/// table, the restart) so that they do not compete with one another for a
/// 2-core CI machine: each cancel request costs the server a fork (about
/// 4 ms on PostgreSQL 15, one after another), and CPU contention stretches
/// that.
#[allow(dead_code)] // for tests/postgres and tests/sqlx; tests/server.rs does not use it
pub async fn wall_clock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
