//! The six widgets over sqlx match verify.sql's independent computations
//! for every seeded tenant.

use std::time::Duration;

use fanout::FanOut;

use crate::sqlx_widgets;
use crate::widgets::{self, Mode};

#[tokio::test]
async fn every_widget_over_sqlx_matches_independent_sql_for_every_tenant() {
    let pool = crate::pool("fanout-test-sqlx-accuracy", 6, Duration::from_secs(10)).await;
    let client = crate::monitor("fanout-test-sqlx-accuracy-verify").await;
    let dashboard = sqlx_widgets::dashboard(&pool, |_| Mode::Normal);
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(20));
    for n in 1..=crate::pg::TENANTS {
        let tenant = crate::tenant(n);
        let (a, b, c, d, e, f) = fan_out.run(&tenant, sqlx_widgets::refs(&dashboard)).await;
        for (name, source) in widgets::NAMES.iter().zip([
            &a.source, &b.source, &c.source, &d.source, &e.source, &f.source,
        ]) {
            assert!(
                source.is_fresh(),
                "{tenant}: {name} was not fresh: {source}"
            );
        }
        let expected = expected(&client, &tenant).await;
        assert_eq!(a.value, expected.0, "{tenant}: total_revenue");
        assert_eq!(b.value, expected.1, "{tenant}: outstanding");
        assert_eq!(c.value, expected.2, "{tenant}: child_count");
        assert_eq!(d.value, expected.3, "{tenant}: invoice_stats");
        assert_eq!(e.value, expected.4, "{tenant}: recent_payments");
        assert_eq!(f.value, expected.5, "{tenant}: arrears");
        assert!(
            !e.value.0.is_empty() && !f.value.0.is_empty(),
            "{tenant} has data"
        );
    }
}

/// The values computed by verify.sql, through tokio-postgres.
async fn expected(
    client: &tokio_postgres::Client,
    tenant: &fanout::TenantId,
) -> (
    widgets::Cents,
    widgets::Cents,
    i64,
    widgets::InvoiceStats,
    widgets::RecentPayments,
    widgets::Arrears,
) {
    let rows = |name: &'static str| {
        let statement =
            crate::sql::named(crate::sql::VERIFY, name).expect("verify.sql names every widget");
        async move {
            client
                .query(statement, &[&tenant.as_str()])
                .await
                .unwrap_or_else(|e| panic!("verify {name}: {}", crate::seed::describe(&e)))
        }
    };
    (
        widgets::decode_cents(&rows("total_revenue").await).unwrap(),
        widgets::decode_cents(&rows("outstanding").await).unwrap(),
        widgets::decode_count(&rows("child_count").await).unwrap(),
        widgets::decode_invoice_stats(&rows("invoice_stats").await).unwrap(),
        widgets::decode_recent_payments(&rows("recent_payments").await).unwrap(),
        widgets::decode_arrears(&rows("arrears").await).unwrap(),
    )
}
