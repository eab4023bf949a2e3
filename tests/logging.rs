//! The log contract: one event per input when it settles, with the fields
//! `tenant`, `query` (or `index`), `outcome` and `elapsed_ms`.

mod support;

use std::time::Duration;

use fanout::{FanOut, TenantId, join_all_with_defaults};
use support::{Capture, Ending, Scripted};
use tracing::Level;

#[tokio::test(start_paused = true)]
async fn a_failed_query_logs_one_warning_naming_tenant_and_query() {
    let capture = Capture::default();
    let _guard = capture.install();
    let tenant = TenantId::new("creche-042").unwrap();
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    fan_out
        .run(
            &tenant,
            (
                Scripted::new("total_revenue", 250),
                Scripted::new("arrears", 100).ending(Ending::Fail),
                Scripted::new("recent_payments", 100).ending(Ending::Hang),
                Scripted::new("child_count", 100).ending(Ending::Panic),
            ),
        )
        .await;

    let events = capture.events();
    let of = |query: &str| -> Vec<_> {
        events
            .iter()
            .filter(|e| e.field("query") == Some(query))
            .collect()
    };

    let arrears = of("arrears");
    assert_eq!(arrears.len(), 1, "{events:#?}");
    assert_eq!(arrears[0].level, Level::WARN);
    assert_eq!(arrears[0].field("tenant"), Some("creche-042"));
    assert_eq!(arrears[0].field("outcome"), Some("error"));
    assert_eq!(arrears[0].field("elapsed_ms"), Some("100.0"));
    assert_eq!(arrears[0].field("error"), Some("arrears failed"));

    let payments = of("recent_payments");
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].level, Level::WARN);
    assert_eq!(payments[0].field("outcome"), Some("timed_out"));
    assert_eq!(payments[0].field("elapsed_ms"), Some("2000.0"));

    let children = of("child_count");
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].level, Level::ERROR);
    assert_eq!(children[0].field("outcome"), Some("panicked"));
    assert_eq!(children[0].field("error"), Some("child_count exploded"));

    let revenue = of("total_revenue");
    assert_eq!(revenue.len(), 1);
    assert_eq!(revenue[0].level, Level::DEBUG);
    assert_eq!(revenue[0].field("outcome"), Some("fresh"));
    assert_eq!(revenue[0].field("tenant"), Some("creche-042"));
}

#[tokio::test(start_paused = true)]
async fn free_functions_log_the_index_and_error() {
    let capture = Capture::default();
    let _guard = capture.install();
    let ok = Box::pin(async { Ok::<u32, String>(1) }) as futures_util::future::BoxFuture<'_, _>;
    let bad = Box::pin(async { Err("pool timed out".to_string()) })
        as futures_util::future::BoxFuture<'_, _>;
    let values = join_all_with_defaults([(ok, 0_u32), (bad, 9)]).await;
    assert_eq!(values, [1, 9]);

    let warnings: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| e.level == Level::WARN)
        .collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].field("index"), Some("1"));
    assert_eq!(warnings[0].field("outcome"), Some("error"));
    assert_eq!(warnings[0].field("error"), Some("pool timed out"));
    assert!(warnings[0].field("elapsed_ms").is_some());
}
