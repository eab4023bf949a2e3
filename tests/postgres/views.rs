//! The materialized views and the hybrid widget queries (hybrid.sql): for
//! every seeded tenant they give what the live-only queries (queries.sql)
//! and the independent ones (verify.sql) give; they stay equal right after
//! a payment lands in the current month, after a month boundary the views
//! were refreshed before, and after a write into a closed month; and a
//! concurrent refresh never disturbs a dashboard reading them.
//!
//! The tests that write use a schema of their own and undo their writes
//! (one transaction each, rolled back), so they leave the seed as it was;
//! they take turns, since the refresh locks every tenant's watermark.

use std::time::Duration;

use fanout::{FanOut, TenantId};
use tokio_postgres::Client;

use crate::dashboard_views;
use crate::widgets::{self, Mode, Queries};

const SCHEMA: &str = "fanout_test_views";
const TENANTS: u32 = 3;

/// The writing tests take turns.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn own_schema(application: &str) -> Client {
    let config = crate::seeded_at(&crate::database_url(), SCHEMA, TENANTS, application).await;
    crate::connect(&config).await
}

/// Every widget's value for `tenant` by `queries`, on `client` (inside the
/// caller's transaction, if any).
async fn values(client: &Client, queries: Queries, tenant: &TenantId) -> crate::Values {
    let rows = |name: &'static str| async move {
        client
            .query(queries.sql(name), &[&tenant.as_str()])
            .await
            .unwrap_or_else(|e| panic!("{queries:?} {name}: {}", crate::seed::describe(&e)))
    };
    crate::Values {
        total_revenue: widgets::decode_cents(&rows("total_revenue").await).unwrap(),
        outstanding: widgets::decode_cents(&rows("outstanding").await).unwrap(),
        child_count: widgets::decode_count(&rows("child_count").await).unwrap(),
        invoice_stats: widgets::decode_invoice_stats(&rows("invoice_stats").await).unwrap(),
        recent_payments: widgets::decode_recent_payments(&rows("recent_payments").await).unwrap(),
        arrears: widgets::decode_arrears(&rows("arrears").await).unwrap(),
    }
}

/// Asserts hybrid = live = verify.sql for `tenant` and returns the value.
async fn all_agree(client: &Client, tenant: &TenantId, when: &str) -> crate::Values {
    let live = values(client, Queries::Live, tenant).await;
    assert_eq!(
        values(client, Queries::Hybrid, tenant).await,
        live,
        "{tenant} {when}: hybrid vs live"
    );
    assert_eq!(
        crate::expected(client, tenant).await,
        live,
        "{tenant} {when}: verify.sql vs live"
    );
    live
}

/// How many view buckets the hybrid queries of `tenant` read: proof that
/// the comparison exercised the views and not only the live part.
async fn buckets_read(client: &Client, tenant: &TenantId) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM monthly_invoice_stats AS v, views_watermark AS w \
             WHERE v.tenant_id = $1 AND w.tenant_id = $1 AND v.month_end <= w.invoices_complete_before",
            &[&tenant.as_str()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn hybrid_equals_live_for_every_seeded_tenant() {
    let config = crate::seeded("fanout-test-views-every").await;
    let client = crate::connect(&config).await;
    // A seed reused from an earlier month has an old watermark: still
    // exact, but the closed months would be read live.
    dashboard_views::refresh(&client).await.unwrap();
    let pool = crate::pool(config, 6, Duration::from_secs(10));
    let hybrid = widgets::dashboard_with(&pool, Queries::Hybrid, |_| Mode::Normal);
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(20));
    for n in 1..=crate::TENANTS {
        let tenant = crate::tenant(n);
        let expected = crate::expected(&client, &tenant).await;
        assert_eq!(
            crate::dashboard_values(&fan_out, &hybrid, &tenant).await,
            expected,
            "{tenant}: the dashboard with views vs verify.sql"
        );
        assert_eq!(
            values(&client, Queries::Live, &tenant).await,
            expected,
            "{tenant}: live"
        );
        // Eleven closed months of five statuses, less the empty ones.
        assert!(
            buckets_read(&client, &tenant).await >= 11,
            "{tenant} read its closed months from the view"
        );
    }
}

#[tokio::test]
async fn a_payment_in_the_current_month_counts_at_once() {
    let _turn = one_at_a_time().await;
    let client = own_schema("fanout-test-views-payment").await;
    let tenant = crate::tenant(1);
    client.batch_execute("BEGIN").await.unwrap();
    dashboard_views::refresh(&client).await.unwrap();
    let before = all_agree(&client, &tenant, "after the refresh").await;
    assert!(buckets_read(&client, &tenant).await >= 11);

    // A parent pays this month's sent invoice in full, now: a payment row
    // and the invoice marked paid, as the billing code would.
    let invoice: i64 = client
        .query_one(
            "SELECT id FROM invoices WHERE tenant_id = $1 AND status = 'sent' AND paid_cents = 0 \
               AND issued_at >= date_trunc('month', now()) ORDER BY id LIMIT 1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    let paid = client
        .execute(
            "WITH i AS (UPDATE invoices SET paid_cents = amount_cents, status = 'paid' \
                        WHERE tenant_id = $1 AND id = $2 RETURNING *) \
             INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at) \
             SELECT tenant_id, id * 10 + 9, id, parent_id, child_id, amount_cents, 'card', now() FROM i",
            &[&tenant.as_str(), &invoice],
        )
        .await
        .unwrap();
    assert_eq!(paid, 1);

    let after = all_agree(&client, &tenant, "after a payment this month, no refresh").await;
    assert!(
        after.total_revenue.0 > before.total_revenue.0,
        "the payment counts"
    );
    assert!(
        after.outstanding.0 < before.outstanding.0,
        "and is no longer owed"
    );
    assert_ne!(after.invoice_stats, before.invoice_stats);
    // Writes into the current month leave the watermark alone: the closed
    // months still come from the view.
    assert!(buckets_read(&client, &tenant).await >= 11);
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_month_that_closed_after_the_refresh_is_read_live() {
    let _turn = one_at_a_time().await;
    let client = own_schema("fanout-test-views-boundary").await;
    let tenant = crate::tenant(2);
    client.batch_execute("BEGIN").await.unwrap();
    dashboard_views::refresh(&client).await.unwrap();

    // The views as a refresh two days before this month began left them:
    // last month was then the current month, still open. Its watermark is
    // what that refresh set; what last month got after it is written below
    // (an invoice issued on its last day) and is not in the view.
    client
        .execute(
            "UPDATE views_watermark SET invoices_complete_before = date_trunc('month', now()) - interval '2 days', \
                                        revenue_complete_before = date_trunc('month', now()) - interval '2 days' \
             WHERE tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    let before = all_agree(&client, &tenant, "views refreshed before the boundary").await;
    let added = client
        .execute(
            "INSERT INTO invoices (tenant_id, id, parent_id, child_id, status, amount_cents, issued_at, due_date) \
             SELECT tenant_id, id - (id % 100) + 50, parent_id, child_id, 'overdue', 123456, \
                    date_trunc('month', now()) - interval '1 day', (date_trunc('month', now()) - interval '1 day')::date + 14 \
             FROM invoices WHERE tenant_id = $1 ORDER BY id LIMIT 1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(added, 1);
    let after = all_agree(
        &client,
        &tenant,
        "last month's late invoice, views from before the boundary",
    )
    .await;
    assert_eq!(after.outstanding.0, before.outstanding.0 + 123_456);

    // The trap the watermark avoids: trusting "every month before this one"
    // would read last month from the view, which lacks that invoice.
    client
        .execute(
            "UPDATE views_watermark SET invoices_complete_before = date_trunc('month', now()) WHERE tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    let calendar = values(&client, Queries::Hybrid, &tenant).await;
    assert_eq!(
        calendar.outstanding, before.outstanding,
        "the calendar split misses the invoice"
    );
    assert_ne!(calendar, after);

    // A refresh after the boundary takes it in, and last month now comes
    // from the view.
    dashboard_views::refresh(&client).await.unwrap();
    assert_eq!(
        all_agree(&client, &tenant, "refreshed after the boundary").await,
        after
    );
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_write_into_a_closed_month_reopens_it_until_the_next_refresh() {
    let _turn = one_at_a_time().await;
    let client = own_schema("fanout-test-views-backdated").await;
    let tenant = crate::tenant(3);
    client.batch_execute("BEGIN").await.unwrap();
    let refreshed = dashboard_views::refresh(&client).await.unwrap();
    let before = all_agree(&client, &tenant, "after the refresh").await;

    // A parent settles an overdue invoice from three months ago, today
    // (the invoice's month is closed and in the view), and a cash payment
    // from two months ago is entered late, dated when it was received.
    let settled = client
        .execute(
            "WITH i AS (UPDATE invoices SET paid_cents = amount_cents, status = 'paid' \
                        WHERE (tenant_id, id) = (SELECT tenant_id, id FROM invoices \
                              WHERE tenant_id = $1 AND status = 'overdue' AND paid_cents = 0 \
                                AND issued_at < date_trunc('month', now()) - interval '2 months' \
                              ORDER BY id LIMIT 1) RETURNING *) \
             INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at) \
             SELECT tenant_id, id * 10 + 9, id, parent_id, child_id, amount_cents, 'eft', now() FROM i",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(settled, 1);
    let late = client
        .execute(
            "WITH i AS (UPDATE invoices SET paid_cents = amount_cents, status = 'paid' \
                        WHERE (tenant_id, id) = (SELECT tenant_id, id FROM invoices \
                              WHERE tenant_id = $1 AND status = 'overdue' AND paid_cents = 0 \
                                AND issued_at >= date_trunc('month', now()) - interval '2 months' \
                                AND issued_at < date_trunc('month', now()) - interval '1 month' \
                              ORDER BY id LIMIT 1) RETURNING *) \
             INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at) \
             SELECT tenant_id, id * 10 + 9, id, parent_id, child_id, amount_cents, 'cash', issued_at + interval '3 days' FROM i",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(late, 1);
    let after = all_agree(
        &client,
        &tenant,
        "after writes into closed months, no refresh",
    )
    .await;
    assert!(after.outstanding.0 < before.outstanding.0);

    // The triggers did it: with the watermark the refresh set put back, the
    // hybrid queries read the stale months from the view.
    client
        .execute(
            "UPDATE views_watermark SET invoices_complete_before = $2, revenue_complete_before = $2 \
             WHERE tenant_id = $1",
            &[&tenant.as_str(), &refreshed.complete_before],
        )
        .await
        .unwrap();
    let stale = values(&client, Queries::Hybrid, &tenant).await;
    assert_eq!(
        stale.invoice_stats, before.invoice_stats,
        "without the trigger the view is stale"
    );
    assert_ne!(stale, after);
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_refresh_does_not_disturb_dashboards_reading_the_views() {
    let _turn = one_at_a_time().await;
    let config = crate::seeded_at(
        &crate::database_url(),
        SCHEMA,
        TENANTS,
        "fanout-test-views-reader",
    )
    .await;
    let refresher = own_schema("fanout-test-views-refresher").await;
    let checker = crate::connect(&config).await;
    let pool = crate::pool(config, 6, Duration::from_secs(10));
    let hybrid = widgets::dashboard_with(&pool, Queries::Hybrid, |_| Mode::Normal);
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(10))
        .deadline(Duration::from_secs(20));
    let mut expected = Vec::new();
    for n in 1..=TENANTS {
        let tenant = crate::tenant(n);
        expected.push((tenant.clone(), crate::expected(&checker, &tenant).await));
    }

    let refreshes = tokio::spawn(async move {
        for _ in 0..3 {
            dashboard_views::refresh(&refresher).await.unwrap();
        }
    });
    while !refreshes.is_finished() {
        for (tenant, values) in &expected {
            assert_eq!(
                &crate::dashboard_values(&fan_out, &hybrid, tenant).await,
                values,
                "{tenant} while the views refresh"
            );
        }
    }
    refreshes.await.unwrap();
    for (tenant, values) in &expected {
        assert_eq!(
            &crate::dashboard_values(&fan_out, &hybrid, tenant).await,
            values
        );
        assert!(
            buckets_read(&checker, tenant).await >= 11,
            "{tenant} reads the refreshed views"
        );
    }
}

#[tokio::test]
async fn the_background_refresher_raises_the_watermark() {
    let _turn = one_at_a_time().await;
    let config = crate::seeded_at(
        &crate::database_url(),
        SCHEMA,
        TENANTS,
        "fanout-test-views-schedule",
    )
    .await;
    let client = crate::connect(&config).await;
    let tenant = crate::tenant(1);
    let watermark = || async {
        client
            .query_one(
                "SELECT invoices_complete_before FROM views_watermark WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await
            .unwrap()
            .get::<_, std::time::SystemTime>(0)
    };
    client
        .execute(
            "UPDATE views_watermark SET invoices_complete_before = '2000-01-01' WHERE tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    let started = std::time::SystemTime::now();
    let refresher = dashboard_views::refresh_every(config, Duration::from_millis(200));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The refresh sets the watermark one hour before its own now().
    let expected = started - Duration::from_secs(3600) - Duration::from_secs(5);
    while watermark().await < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(refresher);
    assert!(buckets_read(&client, &tenant).await >= 11);
}

/// Statements of `application` waiting for a lock.
async fn waiting_for_a_lock(monitor: &Client, application: &str) -> i64 {
    monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            &[&application],
        )
        .await
        .unwrap()
        .get(0)
}

async fn until_waiting(monitor: &Client, application: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while waiting_for_a_lock(monitor, application).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{application} never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An overdue invoice issued two months ago for `tenant`, committed (and
/// removed again by `remove_late_invoice`).
const LATE_INVOICE: &str = "INSERT INTO invoices (tenant_id, id, parent_id, child_id, status, amount_cents, issued_at, due_date) \
     SELECT tenant_id, id - (id % 100) + 60, parent_id, child_id, 'overdue', 654321, \
            date_trunc('month', now()) - interval '2 months' + interval '5 days', \
            (date_trunc('month', now()) - interval '2 months')::date + 19 \
     FROM invoices WHERE tenant_id = $1 ORDER BY id LIMIT 1";

async fn remove_late_invoice(client: &Client, tenant: &TenantId) {
    client
        .execute(
            "DELETE FROM invoices WHERE tenant_id = $1 AND id % 100 = 60",
            &[&tenant.as_str()],
        )
        .await
        .unwrap();
    dashboard_views::refresh(client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_into_a_closed_month_during_a_refresh_is_never_lost() {
    const REFRESHER: &str = "fanout-test-views-race-refresher";
    const WRITER: &str = "fanout-test-views-race-writer";
    let _turn = one_at_a_time().await;
    let checker = own_schema("fanout-test-views-race-checker").await;
    let refresher = own_schema(REFRESHER).await;
    let writer = own_schema(WRITER).await;
    let tenant = crate::tenant(2);
    remove_late_invoice(&checker, &tenant).await;
    let seeded = all_agree(&checker, &tenant, "before").await;

    // 1. The write comes first and is still open when the refresh starts:
    // the refresh waits for it, then takes it in.
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .execute(LATE_INVOICE, &[&tenant.as_str()])
        .await
        .unwrap();
    let refresh = tokio::spawn(async move {
        dashboard_views::refresh(&refresher).await.unwrap();
        refresher
    });
    until_waiting(&checker, REFRESHER).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let refresher = refresh.await.unwrap();
    let after = all_agree(&checker, &tenant, "write committed during the refresh").await;
    assert_eq!(after.outstanding.0, seeded.outstanding.0 + 654_321);
    assert!(
        buckets_read(&checker, &tenant).await >= 11,
        "the refresh took the write in"
    );
    remove_late_invoice(&checker, &tenant).await;

    // 2. The refresh comes first and is still open when the write lands:
    // the write's trigger waits for the refresh, then reopens the month.
    refresher.batch_execute("BEGIN").await.unwrap();
    dashboard_views::refresh(&refresher).await.unwrap();
    let write = tokio::spawn(async move {
        writer
            .execute(LATE_INVOICE, &[&tenant_of(2)])
            .await
            .unwrap();
    });
    until_waiting(&checker, WRITER).await;
    refresher.batch_execute("COMMIT").await.unwrap();
    write.await.unwrap();
    let after = all_agree(
        &checker,
        &tenant,
        "write during the refresh, committed after it",
    )
    .await;
    assert_eq!(after.outstanding.0, seeded.outstanding.0 + 654_321);
    remove_late_invoice(&checker, &tenant).await;
    assert_eq!(all_agree(&checker, &tenant, "after clean-up").await, seeded);
}

fn tenant_of(n: u32) -> String {
    crate::seed::tenant_id(n)
}
