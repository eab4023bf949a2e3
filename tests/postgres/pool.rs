//! Pool protection: 200 dashboards at once for 20 tenants through a pool of
//! 10 connections and a limiter of 10 permits. Every dashboard completes with
//! correct values, and no query waits for a connection: the pool would fail
//! any wait longer than 50 ms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fanout::FanOut;
use tokio::sync::Semaphore;

use crate::widgets::{self, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_dashboards_share_ten_connections() {
    let config = crate::seeded("fanout-test-pool").await;
    let client = crate::connect(&config).await;
    let mut expected = HashMap::new();
    for n in 1..=crate::TENANTS {
        let tenant = crate::tenant(n);
        expected.insert(tenant.clone(), crate::expected(&client, &tenant).await);
    }
    let expected = Arc::new(expected);

    let pool = crate::pool(config, 10, Duration::from_millis(50));
    let dashboard = Arc::new(widgets::dashboard(&pool, |_| Mode::Normal));
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(60))
        .limiter(Arc::new(Semaphore::new(10)));

    let dashboards: Vec<_> = (0..200)
        .map(|i| {
            let (fan_out, dashboard, expected) = (
                fan_out.clone(),
                Arc::clone(&dashboard),
                Arc::clone(&expected),
            );
            tokio::spawn(async move {
                let tenant = crate::tenant(i % crate::TENANTS + 1);
                let values = crate::dashboard_values(&fan_out, &dashboard, &tenant).await;
                assert_eq!(values, expected[&tenant], "{tenant}");
            })
        })
        .collect();
    for dashboard in dashboards {
        dashboard
            .await
            .expect("every dashboard completes with correct values");
    }
    let status = pool.status();
    assert!(status.size <= 10, "{status:?}");
}
