//! Database tests: the dashboard example's six widgets against a real
//! PostgreSQL, seeded by the tests themselves (20 tenants, in the schema
//! `fanout_test`, reused while the seed SQL is unchanged).
//!
//! `scripts/test` starts a throw-away PostgreSQL and sets `DATABASE_URL`;
//! without it these tests fail, saying so. They never skip.

#[path = "../../examples/dashboard/db.rs"]
mod db;
#[path = "../../examples/dashboard/seed.rs"]
mod seed;
#[path = "../../examples/dashboard/sql.rs"]
mod sql;
#[path = "../../examples/dashboard/widgets.rs"]
mod widgets;

mod accuracy;
mod pool;
mod timeouts;

use std::time::Duration;

use deadpool_postgres::Pool;
use fanout::TenantId;
use tokio::sync::OnceCell;
use tokio_postgres::{Client, Config};

const SCHEMA: &str = "fanout_test";
const TENANTS: u32 = 20;

/// The database config, pointed at the seeded schema, with `application`
/// as `application_name` so `pg_stat_activity` can tell tests apart.
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
            let client = connect(&config).await;
            seed::ensure_seeded(&client, SCHEMA, TENANTS, false)
                .await
                .unwrap_or_else(|e| panic!("seeding failed: {e}"));
        })
        .await;
    config.application_name(application);
    config
}

pub async fn connect(config: &Config) -> Client {
    db::connect(config).await.unwrap_or_else(|e| panic!("{e}"))
}

pub fn pool(config: Config, size: usize, wait: Duration) -> Pool {
    db::pool(config, size, wait).unwrap_or_else(|e| panic!("{e}"))
}

pub fn tenant(n: u32) -> TenantId {
    TenantId::new(seed::tenant_id(n)).unwrap()
}

/// Every widget's value for one tenant, comparable as a whole.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Values {
    pub total_revenue: widgets::Cents,
    pub outstanding: widgets::Cents,
    pub child_count: i64,
    pub invoice_stats: widgets::InvoiceStats,
    pub recent_payments: widgets::RecentPayments,
    pub arrears: widgets::Arrears,
}

/// The values computed by verify.sql's independent queries.
pub async fn expected(client: &Client, tenant: &TenantId) -> Values {
    let rows = |name: &'static str| {
        let statement = sql::named(sql::VERIFY, name).expect("verify.sql names every widget");
        async move {
            client
                .query(statement, &[&tenant.as_str()])
                .await
                .unwrap_or_else(|e| panic!("verify {name}: {}", seed::describe(&e)))
        }
    };
    Values {
        total_revenue: widgets::decode_cents(&rows("total_revenue").await).unwrap(),
        outstanding: widgets::decode_cents(&rows("outstanding").await).unwrap(),
        child_count: widgets::decode_count(&rows("child_count").await).unwrap(),
        invoice_stats: widgets::decode_invoice_stats(&rows("invoice_stats").await).unwrap(),
        recent_payments: widgets::decode_recent_payments(&rows("recent_payments").await).unwrap(),
        arrears: widgets::decode_arrears(&rows("arrears").await).unwrap(),
    }
}

/// Runs the dashboard and returns its values, failing the test on any
/// degraded widget.
pub async fn dashboard_values(
    fan_out: &fanout::FanOut,
    dashboard: &widgets::Dashboard,
    tenant: &TenantId,
) -> Values {
    let (a, b, c, d, e, f) = fan_out.run(tenant, widgets::refs(dashboard)).await;
    for (name, source) in widgets::NAMES.iter().zip([
        &a.source, &b.source, &c.source, &d.source, &e.source, &f.source,
    ]) {
        assert!(
            source.is_fresh(),
            "{tenant}: {name} was not fresh: {source}"
        );
    }
    Values {
        total_revenue: a.value,
        outstanding: b.value,
        child_count: c.value,
        invoice_stats: d.value,
        recent_payments: e.value,
        arrears: f.value,
    }
}
