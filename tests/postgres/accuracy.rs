//! Every widget matches an independent SQL computation, for several
//! tenants, loaded concurrently and sequentially; no two tenants share a
//! value, so a query missing its tenant filter would be caught.

use std::time::Duration;

use fanout::FanOut;

use crate::widgets::{self, Mode};

#[tokio::test]
async fn every_widget_matches_independent_sql_for_several_tenants() {
    let config = crate::seeded("fanout-test-accuracy").await;
    let client = crate::connect(&config).await;
    let pool = crate::pool(config, 6, Duration::from_secs(10));
    let dashboard = widgets::dashboard(&pool, |_| Mode::Normal);
    let concurrent = FanOut::new()
        .timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(20));
    let sequential = concurrent.clone().sequential();

    let mut seen = Vec::new();
    for n in [1, 6, 13, 20] {
        let tenant = crate::tenant(n);
        let expected = crate::expected(&client, &tenant).await;
        assert_eq!(
            crate::dashboard_values(&concurrent, &dashboard, &tenant).await,
            expected,
            "{tenant}, concurrent"
        );
        assert_eq!(
            crate::dashboard_values(&sequential, &dashboard, &tenant).await,
            expected,
            "{tenant}, sequential"
        );
        assert!(
            !expected.recent_payments.0.is_empty() && !expected.arrears.0.is_empty(),
            "{tenant} has data"
        );
        seen.push(expected);
    }

    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(a.total_revenue, b.total_revenue);
            assert_ne!(a.outstanding, b.outstanding);
            assert_ne!(a.child_count, b.child_count);
            assert_ne!(a.invoice_stats, b.invoice_stats);
            assert_ne!(a.recent_payments, b.recent_payments);
            assert_ne!(a.arrears, b.arrears);
        }
    }
}
