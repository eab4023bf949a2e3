//! The seeded test database, shared by `tests/postgres` and
//! `tests/server.rs`: the dashboard example's schema with 20 tenants in the
//! schema `fanout_test`, seeded once and reused while the seed SQL is
//! unchanged. Needs `crate::db` and `crate::seed` (the example's modules).
//!
//! `scripts/test` starts a throw-away PostgreSQL and sets `DATABASE_URL`;
//! without it the tests fail, saying so. They never skip.

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

/// `DATABASE_URL`, which `scripts/test` sets.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: run scripts/test (it starts a throw-away PostgreSQL), \
             or point DATABASE_URL at a PostgreSQL database the tests may create a schema in"
        )
    })
}
