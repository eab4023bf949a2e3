//! `fanout::live`'s PostgreSQL change feed against a real server: a
//! committed payment reaches a subscriber through a trigger's `pg_notify`,
//! the listener survives its connection being killed (and subscribers
//! converge to what was written meanwhile), and a malformed payload is
//! logged and ignored.

#[path = "../examples/dashboard/db.rs"]
#[allow(dead_code)] // the pool is the example's
mod db;
#[path = "pg/mod.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../examples/dashboard/seed.rs"]
#[allow(dead_code)]
mod seed;
#[path = "../examples/dashboard/sql.rs"]
#[allow(dead_code)]
mod sql;
mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout::dynamic::WidgetRegistry;
use fanout::live::{ChangeFeed, FeedHandle, Live, Subscription, Update};
use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
use tokio::time::{Instant, sleep, timeout};
use tokio_postgres::{Client, Config};

const CHANNEL: &str = "fanout_live_test";

/// `SELECT sum(amount_cents)` of the tenant's payments.
struct Revenue(Arc<Client>);

impl DashboardQuery for Revenue {
    type Output = i64;
    type Error = tokio_postgres::Error;

    fn name(&self) -> &'static str {
        "total_revenue"
    }

    async fn run(&self, ctx: QueryContext) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .0
            .query_one(
                "SELECT coalesce(sum(amount_cents), 0)::bigint FROM payments WHERE tenant_id = $1",
                &[&ctx.tenant().as_str()],
            )
            .await?;
        Ok(row.get(0))
    }

    fn fallback(&self) -> i64 {
        -1
    }
}

/// The seeded schema `schema`, with the trigger that notifies `CHANNEL` of
/// each payment, a client on it and live dashboards of its revenue.
async fn setup(schema: &str, application: &str) -> (Config, Arc<Client>, Live) {
    let config = pg::seeded_at(&pg::database_url(), schema, 3, application).await;
    let client = Arc::new(db::connect(&config).await.unwrap());
    client
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION notify_payment() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('{CHANNEL}', json_build_object(
                     'tenant', NEW.tenant_id,
                     'widgets', json_build_array('total_revenue'),
                     'event', 'payment_received',
                     'data', json_build_object('tenant', NEW.tenant_id, 'amount_cents', NEW.amount_cents))::text);
                 RETURN NEW;
             END $$;
             DROP TRIGGER IF EXISTS payments_notify ON payments;
             CREATE TRIGGER payments_notify AFTER INSERT ON payments
                 FOR EACH ROW EXECUTE FUNCTION notify_payment();"
        ))
        .await
        .unwrap();
    let mut registry = WidgetRegistry::new();
    registry.register(Revenue(Arc::clone(&client))).unwrap();
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(3));
    (config, client, Live::builder(fan_out, registry).build())
}

/// Commits a payment of `cents` for `tenant`.
async fn pay(client: &Client, tenant: &TenantId, cents: i64) {
    let inserted = client
        .execute(
            "INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at)
             SELECT tenant_id, (SELECT coalesce(max(id), 0) + 1 FROM payments WHERE tenant_id = $1),
                    id, parent_id, child_id, $2, 'eft', now()
             FROM invoices WHERE tenant_id = $1 ORDER BY id LIMIT 1",
            &[&tenant.as_str(), &cents],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1, "the seed has an invoice for {tenant}");
}

async fn revenue(client: &Client, tenant: &TenantId) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(amount_cents), 0)::bigint FROM payments WHERE tenant_id = $1",
            &[&tenant.as_str()],
        )
        .await
        .unwrap()
        .get(0)
}

fn revenue_of(update: &Update) -> Option<i64> {
    update.widgets().first().map(|w| w.value.as_i64().unwrap())
}

async fn listening(feed: &FeedHandle, sessions: u64) {
    timeout(Duration::from_secs(10), async {
        while !(feed.is_listening() && feed.sessions() >= sessions) {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the feed listens within 10 s");
}

/// Reads `page` until its revenue is `expected`, for at most 10 s; returns
/// the events seen meanwhile.
async fn until_revenue(page: &mut Subscription, expected: i64) -> Vec<Update> {
    let mut events = Vec::new();
    timeout(Duration::from_secs(10), async {
        loop {
            let update = page.next().await;
            if revenue_of(&update) == Some(expected) {
                return;
            }
            if update.widgets().is_empty() {
                events.push(update);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("revenue never reached {expected}"));
    events
}

fn tenant(n: u32) -> TenantId {
    TenantId::new(seed::tenant_id(n)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_payment_reaches_its_tenants_subscribers_only() {
    let (config, client, live) = setup("fanout_live_insert", "fanout-live-insert").await;
    let (a, b) = (tenant(1), tenant(2));
    let mut page_a = live.subscribe(&a, ["total_revenue"]).unwrap();
    let mut page_b = live.subscribe(&b, ["total_revenue"]).unwrap();
    let before = revenue_of(&page_a.next().await).unwrap();
    page_b.next().await;
    let feed = ChangeFeed::new(config, CHANNEL)
        .unwrap()
        .spawn(&live)
        .unwrap();
    listening(&feed, 1).await;
    // The first LISTEN marks everyone changed; let that refresh pass.
    sleep(Duration::from_millis(300)).await;
    while page_a.try_next().is_some() {}

    pay(&client, &a, 5000).await;
    let committed = Instant::now();
    let events = until_revenue(&mut page_a, before + 5000).await;
    let took = committed.elapsed();
    let more = timeout(Duration::from_secs(1), page_a.next()).await;
    let events: Vec<Update> = events.into_iter().chain(more.ok()).collect();
    assert!(
        events.iter().any(|e| e.kind() == "payment_received"),
        "a payment_received event: {events:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "commit to update took {took:?}"
    );
    assert_eq!(
        page_b.try_next(),
        None,
        "tenant B hears nothing of A's payment"
    );
    assert_eq!(feed.notifications(), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed_and_subscribers_converge() {
    let (config, client, live) = setup("fanout_live_restart", "fanout-live-restart").await;
    let a = tenant(1);
    let mut page = live.subscribe(&a, ["total_revenue"]).unwrap();
    page.next().await;
    let mut feed_config = config.clone();
    feed_config.application_name("fanout-live-feed");
    let feed = ChangeFeed::new(feed_config, CHANNEL)
        .unwrap()
        .backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn(&live)
        .unwrap();
    listening(&feed, 1).await;

    // Kill the listener's connection and commit a payment before it is
    // back: PostgreSQL will never deliver that notification.
    let mut missed = false;
    for attempt in 0..5 {
        let sessions = feed.sessions();
        let killed: i64 = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = 'fanout-live-feed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1, "attempt {attempt}: the feed's one connection");
        timeout(Duration::from_secs(5), async {
            while feed.is_listening() && feed.sessions() == sessions {
                sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the feed notices");
        pay(&client, &a, 700).await;
        if feed.sessions() == sessions {
            missed = true; // committed while nobody listened
            break;
        }
        // The jittered backoff drew a near-zero delay; try again.
        listening(&feed, sessions + 1).await;
    }
    assert!(missed, "a payment committed while the feed was down");
    let sessions = feed.sessions();
    listening(&feed, sessions + 1).await;
    until_revenue(&mut page, revenue(&client, &a).await).await;
    assert_eq!(feed.notifications().1, 0);
}

#[tokio::test]
async fn a_malformed_payload_is_logged_and_ignored() {
    let capture = support::Capture::default();
    let _guard = capture.install();
    let (config, client, live) = setup("fanout_live_malformed", "fanout-live-malformed").await;
    let a = tenant(1);
    let mut page = live.subscribe(&a, ["total_revenue"]).unwrap();
    let before = revenue_of(&page.next().await).unwrap();
    let channel = "fanout_live_malformed";
    let feed = ChangeFeed::new(config, channel)
        .unwrap()
        .spawn(&live)
        .unwrap();
    listening(&feed, 1).await;
    sleep(Duration::from_millis(300)).await;
    while page.try_next().is_some() {}

    for payload in [
        "{not json",
        r#"{"tenant": 7}"#,
        "not a tenant id!",
        r#"{"tenant":"x","event":"refund"}"#,
    ] {
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .unwrap();
    }
    // A good one after them still works.
    client
        .batch_execute("ALTER TABLE payments DISABLE TRIGGER payments_notify")
        .await
        .unwrap();
    pay(&client, &a, 100).await;
    client
        .batch_execute("ALTER TABLE payments ENABLE TRIGGER payments_notify")
        .await
        .unwrap();
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &a.as_str()])
        .await
        .unwrap();
    until_revenue(&mut page, before + 100).await;

    assert_eq!(feed.notifications(), (1, 4));
    assert!(
        feed.is_listening() && feed.sessions() == 1,
        "the connection was never dropped"
    );
    let warnings: Vec<_> = capture
        .events()
        .into_iter()
        .filter(|e| {
            e.level == tracing::Level::WARN
                && e.field("message") == Some("change feed: ignored a malformed notification")
        })
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert_eq!(warnings[0].field("payload"), Some("{not json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_name_keeps_its_case_and_may_be_a_reserved_word() {
    let (config, client, live) = setup("fanout_live_channel", "fanout-live-channel").await;
    let a = tenant(1);
    for channel in ["Dashboard_Changes", "order"] {
        let feed = ChangeFeed::new(config.clone(), channel)
            .unwrap()
            .spawn(&live)
            .unwrap();
        listening(&feed, 1).await;
        client
            .execute("SELECT pg_notify($1, $2)", &[&channel, &a.as_str()])
            .await
            .unwrap();
        timeout(Duration::from_secs(10), async {
            while feed.notifications() != (1, 0) {
                sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{channel}: {:?}", feed.notifications()));
        assert_eq!(
            feed.sessions(),
            1,
            "{channel}: LISTEN worked the first time"
        );
    }
}
