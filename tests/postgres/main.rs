//! Database tests: the dashboard example's six widgets against a real
//! PostgreSQL, seeded by the tests themselves (see `tests/pg`).

#[allow(dead_code)] // `Refreshed::took` and `complete_before_text` are for the example's report
#[path = "../../examples/dashboard/views.rs"]
mod dashboard_views;
#[path = "../../examples/dashboard/db.rs"]
mod db;
#[path = "../../examples/dashboard/seed.rs"]
mod seed;
#[path = "../../examples/dashboard/sql.rs"]
mod sql;
#[path = "../../examples/dashboard/widgets.rs"]
mod widgets;

#[path = "../pg/mod.rs"]
mod pg;

mod accuracy;
mod clean_connection;
mod hang_up;
mod late_drop;
mod locked_table;
mod pool;
mod restart;
mod timeouts;
mod views;

use std::time::Duration;

use deadpool_postgres::Pool;
use fanout::TenantId;
use tokio_postgres::{Client, Config};

pub use pg::{TENANTS, database_url, drained, seeded, seeded_at, wall_clock};

/// Statements of `application` the server is running (or waiting on a
/// lock for) whose text contains `text`.
pub async fn active(monitor: &Client, application: &str, text: &str) -> i64 {
    pg::backends(monitor, application, "active", text).await
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
