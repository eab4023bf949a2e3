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
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: run scripts/test (it starts a throw-away PostgreSQL), \
             or point DATABASE_URL at a PostgreSQL database the tests may create a schema in"
        )
    });
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
