//! `fanout::live` under virtual time: the throttle's edges, one refresh per
//! tenant whatever its subscribers, slow consumers, lifecycle, resume,
//! failures and tenant isolation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::dynamic::WidgetRegistry;
use fanout::live::{Event, EventKind, Live, Update, Version};
use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

const MS: Duration = Duration::from_millis(1);

/// A stand-in database: a number per (tenant, widget), read by the
/// widgets' queries, which count their runs.
#[derive(Clone, Default)]
struct Db(Arc<Mutex<DbState>>);

#[derive(Default)]
struct DbState {
    values: HashMap<(String, &'static str), i64>,
    runs: HashMap<String, usize>,
    latency: Duration,
    failing: bool,
}

impl Db {
    fn set(&self, tenant: &TenantId, widget: &'static str, value: i64) {
        let mut db = self.0.lock().unwrap();
        db.values.insert((tenant.to_string(), widget), value);
    }
    fn runs(&self, tenant: &TenantId) -> usize {
        self.0
            .lock()
            .unwrap()
            .runs
            .get(tenant.as_str())
            .copied()
            .unwrap_or(0)
    }
    fn latency(&self, latency: Duration) {
        self.0.lock().unwrap().latency = latency;
    }
    fn failing(&self, failing: bool) {
        self.0.lock().unwrap().failing = failing;
    }
}

/// A widget whose value is `[tenant, number]`: whoever receives it can
/// tell whose it is.
struct Probe {
    name: &'static str,
    db: Db,
}

impl DashboardQuery for Probe {
    type Output = (String, i64);
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<(String, i64), std::io::Error> {
        let latency = self.db.0.lock().unwrap().latency;
        sleep(latency).await;
        let mut db = self.db.0.lock().unwrap();
        *db.runs.entry(ctx.tenant().to_string()).or_default() += 1;
        if db.failing {
            return Err(std::io::Error::other("connection reset"));
        }
        let value = db
            .values
            .get(&(ctx.tenant().to_string(), self.name))
            .copied()
            .unwrap_or(0);
        Ok((ctx.tenant().to_string(), value))
    }

    fn fallback(&self) -> (String, i64) {
        (String::new(), -1)
    }
}

/// Live dashboards of one widget, `outstanding`, cached for 10 min in a
/// cache they invalidate on every change; and the registry and cache.
#[cfg(feature = "cache")]
fn cached_live(db: &Db) -> (Live, WidgetRegistry, fanout::cache::QueryCache) {
    use fanout::cache::{CachePolicy, Cached, QueryCache};
    let cache = QueryCache::new(100);
    let mut registry = WidgetRegistry::new();
    let probe = Probe {
        name: "outstanding",
        db: db.clone(),
    };
    let policy = CachePolicy::ttl(Duration::from_secs(600));
    registry
        .register(Cached::new(probe, &cache, policy))
        .unwrap();
    let live = Live::builder(FanOut::new(), registry.clone())
        .cache(cache.clone())
        .build();
    (live, registry, cache)
}

const WIDGETS: [&str; 3] = ["outstanding", "recent_payments", "total_revenue"];

fn live_with(
    db: &Db,
    configure: impl FnOnce(fanout::live::Builder) -> fanout::live::Builder,
) -> Live {
    let mut registry = WidgetRegistry::new();
    for name in WIDGETS {
        registry
            .register(Probe {
                name,
                db: db.clone(),
            })
            .unwrap();
    }
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(3));
    configure(Live::builder(fan_out, registry)).build()
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

/// The number a widget value `[tenant, n]` carries.
fn number(update: &Update, widget: &str) -> Option<i64> {
    update
        .widgets()
        .iter()
        .find(|w| w.name == widget)
        .map(|w| w.value[1].as_i64().unwrap())
}

/// Lets every task that can run, run (virtual time does not move).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_throttled_to_ten_a_second_with_its_last_change_reflected() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["total_revenue"]).unwrap();
    assert_eq!(page.next().await.kind(), "snapshot");
    let loads = db.runs(&t);

    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let update = page.next().await;
            let n = number(&update, "total_revenue").unwrap();
            seen.push((Instant::now(), n));
            if n == 1000 {
                return seen;
            }
        }
    });
    let start = Instant::now();
    for n in 1..=1000 {
        db.set(&t, "total_revenue", n);
        live.notify(&t, ["total_revenue"]);
        sleep(MS).await;
    }
    let seen = reader.await.unwrap();

    for (i, (at, _)) in seen.iter().enumerate() {
        let within_a_second = seen[i..]
            .iter()
            .take_while(|(later, _)| *later < *at + Duration::from_secs(1));
        assert!(
            within_a_second.count() <= 10,
            "more than 10 updates within 1 s from {:?}",
            *at - start
        );
    }
    assert_eq!(seen.last().unwrap().1, 1000, "the last change is reflected");
    assert_eq!(
        seen[0].0, start,
        "the first change of the burst goes out at once"
    );
    assert_eq!(db.runs(&t) - loads, seen.len(), "one refetch per update");
}

#[tokio::test(start_paused = true)]
async fn a_change_after_a_quiet_period_goes_out_with_no_delay() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    for n in 1..=3 {
        sleep(Duration::from_secs(5)).await;
        db.set(&t, "outstanding", n);
        let notified = Instant::now();
        live.notify(&t, ["outstanding"]);
        let update = page.next().await;
        assert_eq!(number(&update, "outstanding"), Some(n));
        assert_eq!(Instant::now(), notified);
    }
}

#[tokio::test(start_paused = true)]
async fn a_thousand_subscribers_cost_one_refetch_per_update() {
    let db = Db::default();
    db.latency(5 * MS);
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut readers = Vec::new();
    for _ in 0..1000 {
        let mut page = live.subscribe(&t, WIDGETS).unwrap();
        readers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            loop {
                let update = page.next().await;
                versions.push(update.version());
                if number(&update, "total_revenue") == Some(50) {
                    return versions;
                }
            }
        }));
    }
    settle().await;
    sleep(20 * MS).await;
    assert_eq!(
        db.runs(&t),
        3,
        "one load for the thousand arrivals: one run per widget"
    );
    for n in 1..=50 {
        db.set(&t, "total_revenue", n);
        live.notify(&t, ["total_revenue"]);
        sleep(7 * MS).await;
    }
    let mut updates = Vec::new();
    for reader in readers {
        updates.push(reader.await.unwrap());
    }
    let refetches = db.runs(&t) - 3;
    assert!(
        updates.iter().all(|v| *v == updates[0]),
        "every subscriber saw the same updates"
    );
    assert_eq!(
        refetches,
        updates[0].len() - 1,
        "refetches = updates, not x subscribers"
    );
    assert!(
        refetches <= 5,
        "50 changes in 350 ms: {refetches} refetches"
    );
}

#[tokio::test(start_paused = true)]
async fn subscribers_arriving_together_share_one_load_and_later_ones_none() {
    let db = Db::default();
    db.latency(50 * MS);
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut first = live.subscribe(&t, WIDGETS).unwrap();
    sleep(20 * MS).await;
    let mut second = live.subscribe(&t, ["total_revenue"]).unwrap();
    let (a, b) = tokio::join!(first.next(), second.next());
    assert_eq!((a.kind(), b.kind()), ("snapshot", "snapshot"));
    assert_eq!(db.runs(&t), 3);
    let mut third = live
        .subscribe(&t, ["outstanding", "total_revenue"])
        .unwrap();
    let snapshot = third.try_next().expect("served from memory at once");
    assert_eq!(
        snapshot
            .widgets()
            .iter()
            .map(|w| w.name)
            .collect::<Vec<_>>(),
        ["outstanding", "total_revenue"]
    );
    assert_eq!(db.runs(&t), 3);
}

#[tokio::test(start_paused = true)]
async fn a_never_read_subscriber_delays_nobody_and_later_gets_the_merged_latest_state() {
    let db = Db::default();
    db.latency(5 * MS);
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut slow = live.subscribe(&t, WIDGETS).unwrap();
    let mut fast = live.subscribe(&t, WIDGETS).unwrap();
    fast.next().await;
    assert_eq!(slow.next().await.kind(), "snapshot"); // then never read again
    for n in 1..=100 {
        db.set(&t, "total_revenue", n);
        db.set(&t, "outstanding", -n);
        live.notify(&t, ["total_revenue", "outstanding"]);
        live.publish(
            &t,
            Event::new(EventKind::PaymentReceived, json!({ "n": n })),
        );
        let notified = Instant::now();
        let mut got_widgets = false;
        while !got_widgets {
            let update = fast.next().await;
            got_widgets = number(&update, "total_revenue") == Some(n);
        }
        assert_eq!(Instant::now() - notified, 5 * MS, "the fast one is on time");
        sleep(200 * MS).await;
    }

    let mut backlog = Vec::new();
    while let Some(update) = slow.try_next() {
        backlog.push(update);
    }
    let events = backlog
        .iter()
        .filter(|u| u.kind() == "payment_received")
        .count();
    assert_eq!(events, 64, "only the events kept: memory is bounded");
    // Each kept event may be preceded by the widgets that changed before
    // it, merged; after the last one, one update with the latest values.
    assert!(
        backlog.len() <= 2 * 64 + 1,
        "no backlog of widget updates: {}",
        backlog.len()
    );
    let last = backlog
        .iter()
        .rev()
        .find(|u| u.kind() == "widgets")
        .unwrap();
    assert_eq!(number(last, "total_revenue"), Some(100));
    assert_eq!(number(last, "outstanding"), Some(-100));
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_subscribe_drop_cycles_leave_nothing_behind() {
    let db = Db::default();
    db.latency(3 * MS);
    let live = live_with(&db, |b| b.refresh_every(Duration::from_secs(1)));
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    for i in 0..10_000u32 {
        let t = tenant(&format!("t{}", i % 7));
        let mut page = live.subscribe(&t, WIDGETS).unwrap();
        match i % 4 {
            0 => {}                       // before the load starts
            1 => sleep(MS).await,         // mid-load
            2 => drop(page.next().await), // after the snapshot
            _ => {
                page.next().await;
                live.notify_all(&t);
                sleep(MS).await; // mid-refresh
            }
        }
        drop(page);
        assert_eq!(live.tenants(), 0);
        assert_eq!(live.subscribers(&t), 0);
    }
    settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        tasks_before,
        "every driver ended"
    );
    // No timer is left: with nothing to wake, virtual time would jump to
    // the next one; a refresh_every timer left behind would run a query.
    let runs: usize = (0..7).map(|i| db.runs(&tenant(&format!("t{i}")))).sum();
    sleep(Duration::from_secs(3600)).await;
    let after: usize = (0..7).map(|i| db.runs(&tenant(&format!("t{i}")))).sum();
    assert_eq!(runs, after);
}

#[tokio::test(start_paused = true)]
async fn resume_sends_only_what_changed_since_a_known_version_and_a_snapshot_otherwise() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut keeper = live.subscribe(&t, WIDGETS).unwrap(); // keeps the state known
    let current = keeper.next().await.version();

    // With the current version: nothing to send.
    let mut page = live.subscribe(&t, WIDGETS).unwrap().resume_from(current);
    settle().await;
    assert_eq!(page.try_next(), None);

    // With an older version: exactly what changed since.
    db.set(&t, "outstanding", 7);
    live.notify(&t, ["outstanding"]);
    let changed = keeper.next().await;
    drop(page);
    let mut page = live.subscribe(&t, WIDGETS).unwrap().resume_from(current);
    let update = page.next().await;
    assert_eq!(update.kind(), "widgets");
    assert_eq!(update.widgets().len(), 1);
    assert_eq!(number(&update, "outstanding"), Some(7));
    assert_eq!(update.version(), changed.version());
    assert_eq!(page.try_next(), None);

    // An unknown version (another process's, a made-up one): a snapshot.
    let elsewhere: Version = "00000000.00000000.5".parse().unwrap();
    let mut other = live.subscribe(&t, WIDGETS).unwrap().resume_from(elsewhere);
    assert_eq!(other.next().await.kind(), "snapshot");

    // A version from before the tenant's state was released: a snapshot.
    drop((keeper, page, other));
    assert_eq!(live.tenants(), 0);
    let mut back = live
        .subscribe(&t, WIDGETS)
        .unwrap()
        .resume_from(changed.version());
    assert_eq!(back.next().await.kind(), "snapshot");
}

#[tokio::test(start_paused = true)]
async fn resume_with_a_widget_loaded_after_the_version_gets_a_snapshot() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut keeper = live.subscribe(&t, ["outstanding"]).unwrap();
    let version = keeper.next().await.version();
    let mut wider = live
        .subscribe(&t, ["outstanding", "total_revenue"])
        .unwrap()
        .resume_from(version);
    let update = wider.next().await;
    assert_eq!(update.kind(), "snapshot");
    assert_eq!(update.widgets().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_last_good_value_as_stale_and_retries() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    db.set(&t, "outstanding", 10);
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    sleep(Duration::from_secs(2)).await;

    db.failing(true);
    live.notify_all(&t);
    let update = page.next().await;
    let widget = &update.widgets()[0];
    assert_eq!((widget.source, widget.cause), ("stale", Some("error")));
    assert_eq!(
        widget.value,
        json!(["t1", 10]),
        "the last good value, not the fallback"
    );
    assert_eq!(widget.age_ms, Some(2000));

    let failed = Instant::now();
    db.failing(false);
    db.set(&t, "outstanding", 11);
    let update = page.next().await;
    assert_eq!(
        Instant::now() - failed,
        Duration::from_secs(1),
        "retried a second later"
    );
    assert_eq!(update.widgets()[0].source, "fresh");
    assert_eq!(number(&update, "outstanding"), Some(11));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_finds_nothing_new_pushes_nothing() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, WIDGETS).unwrap();
    page.next().await;
    live.notify_all(&t);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(db.runs(&t), 6, "refreshed");
    assert_eq!(page.try_next(), None, "but nothing changed");
}

#[tokio::test(start_paused = true)]
async fn widgets_changed_before_an_event_come_before_it() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, WIDGETS).unwrap();
    let mut slow = live.subscribe(&t, WIDGETS).unwrap();
    let snapshot = page.next().await;
    slow.next().await;
    db.set(&t, "recent_payments", 1);
    live.notify(&t, ["recent_payments"]);
    page.next().await; // the refresh ran
    live.publish(&t, EventKind::PaymentReceived.into());
    db.set(&t, "total_revenue", 5);
    live.notify(&t, ["total_revenue"]);
    sleep(Duration::from_secs(1)).await;

    let items: Vec<Update> = std::iter::from_fn(|| slow.try_next()).collect();
    let kinds: Vec<&str> = items.iter().map(Update::kind).collect();
    assert_eq!(kinds, ["widgets", "payment_received", "widgets"]);
    assert_eq!(number(&items[0], "recent_payments"), Some(1));
    assert_eq!(number(&items[2], "total_revenue"), Some(5));
    assert!(
        items
            .windows(2)
            .all(|w| w[0].version().to_string() != w[1].version().to_string())
    );
    // Resuming from any item's version repeats nothing before it.
    for (i, item) in items.iter().enumerate() {
        let mut resumed = live
            .subscribe(&t, WIDGETS)
            .unwrap()
            .resume_from(item.version());
        let rest: Vec<Update> = std::iter::from_fn(|| resumed.try_next()).collect();
        assert_eq!(rest, items[i + 1..], "resumed after item {i}");
    }
    drop(snapshot);
}

#[tokio::test(start_paused = true)]
async fn next_is_cancel_safe() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    // A heartbeat wins the select: the pending next() is dropped.
    tokio::select! {
        _ = page.next() => panic!("nothing changed yet"),
        () = sleep(Duration::from_secs(30)) => {}
    }
    db.set(&t, "outstanding", 3);
    live.notify(&t, ["outstanding"]);
    tokio::select! {
        _ = sleep(Duration::ZERO) => {}
        _ = std::future::pending::<()>() => {}
    }
    settle().await;
    assert_eq!(number(&page.next().await, "outstanding"), Some(3));
}

#[tokio::test(start_paused = true)]
async fn an_interval_refresh_announces_metrics_updated() {
    let db = Db::default();
    let live = live_with(&db, |b| b.refresh_every(Duration::from_secs(60)));
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    db.set(&t, "outstanding", 9);
    let start = Instant::now();
    let update = page.next().await;
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
    assert_eq!(number(&update, "outstanding"), Some(9));
    let event = page.next().await;
    assert_eq!(event.kind(), "metrics_updated");
    let Update::Event { event, .. } = event else {
        unreachable!()
    };
    assert_eq!(event.data, json!({ "changed": ["outstanding"] }));
}

#[tokio::test(start_paused = true)]
async fn notifications_for_tenants_or_widgets_nobody_watches_do_nothing() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    live.notify_all(&t);
    live.publish(&t, EventKind::ArrearsAlert.into());
    assert_eq!(live.tenants(), 0);
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    live.notify(&t, ["total_revenue", "no_such_widget"]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(db.runs(&t), 1);
    assert_eq!(page.try_next(), None);
}

#[test]
fn subscribing_outside_a_runtime_is_an_error_not_a_panic() {
    let live = live_with(&Db::default(), |b| b);
    let refused = live.subscribe(&tenant("t1"), ["outstanding"]).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "live dashboards need a Tokio runtime (subscribe from within one)"
    );
}

#[tokio::test(start_paused = true)]
async fn updates_serialize_as_typed_json() {
    let db = Db::default();
    let live = live_with(&db, |b| b);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    let snapshot = page.next().await;
    let json: Value = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["type"], "snapshot");
    assert_eq!(json["version"], snapshot.version().to_string());
    assert_eq!(json["widgets"][0]["name"], "outstanding");
    assert_eq!(json["widgets"][0]["source"], "fresh");
    assert!(json["widgets"][0].get("cause").is_none());
    live.publish(
        &t,
        Event::new(EventKind::InvoiceStatusChanged, json!({ "status": "paid" })),
    );
    let json: Value = serde_json::to_value(page.next().await).unwrap();
    assert_eq!(json["type"], "invoice_status_changed");
    assert_eq!(json["data"], json!({ "status": "paid" }));
}

#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn a_refresh_invalidates_the_tenant_in_the_cache() {
    let db = Db::default();
    let (live, _, cache) = cached_live(&db);
    let t = tenant("t1");
    let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
    page.next().await;
    db.set(&t, "outstanding", 4);
    live.notify_all(&t);
    let update = page.next().await;
    assert_eq!(number(&update, "outstanding"), Some(4));
    assert_eq!(update.widgets()[0].source, "fresh");
    assert_eq!(cache.generation(&t), 1);
}

mod isolation {
    //! No subscriber ever sees another tenant's value or event, whatever
    //! the subscribers, notifications and tenants.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Step {
        Subscribe { tenant: u8, widgets: u8 },
        Drop { index: u8 },
        Change { tenant: u8, widget: u8, value: i64 },
        Event { tenant: u8 },
        Wait { ms: u8 },
        Read { index: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3u8, 1..8u8).prop_map(|(tenant, widgets)| Step::Subscribe { tenant, widgets }),
            any::<u8>().prop_map(|index| Step::Drop { index }),
            (0..3u8, 0..3u8, any::<i64>()).prop_map(|(tenant, widget, value)| Step::Change {
                tenant,
                widget,
                value
            }),
            (0..3u8).prop_map(|tenant| Step::Event { tenant }),
            (0..150u8).prop_map(|ms| Step::Wait { ms }),
            any::<u8>().prop_map(|index| Step::Read { index }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn no_subscriber_sees_another_tenants_value_or_event(steps in proptest::collection::vec(step(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let db = Db::default();
                db.latency(2 * MS);
                let live = live_with(&db, |b| b.events_kept(std::num::NonZeroUsize::new(4).unwrap()));
                let tenants = ["a", "b", "c"].map(tenant);
                // Each page, and the latest value it has seen of each widget.
                let mut pages: Vec<(fanout::live::Subscription, HashMap<&'static str, i64>)> = Vec::new();
                let check = |(page, latest): &mut (fanout::live::Subscription, HashMap<&'static str, i64>)| {
                    while let Some(update) = page.try_next() {
                        let own = page.tenant().as_str();
                        for widget in update.widgets() {
                            prop_assert_eq!(widget.value[0].as_str(), Some(own));
                            latest.insert(widget.name, widget.value[1].as_i64().unwrap());
                        }
                        if let Update::Event { event, .. } = &update {
                            prop_assert_eq!(event.data["tenant"].as_str(), Some(own));
                        }
                    }
                    Ok(())
                };
                for step in steps {
                    match step {
                        Step::Subscribe { tenant, widgets } => {
                            let names: Vec<&str> = WIDGETS.iter().enumerate().filter(|(i, _)| widgets & (1 << i) != 0).map(|(_, n)| *n).collect();
                            pages.push((live.subscribe(&tenants[tenant as usize], names).unwrap(), HashMap::new()));
                        }
                        Step::Drop { index } if !pages.is_empty() => {
                            let index = index as usize % pages.len();
                            check(&mut pages[index])?;
                            pages.swap_remove(index);
                        }
                        Step::Change { tenant, widget, value } => {
                            let t = &tenants[tenant as usize];
                            db.set(t, WIDGETS[widget as usize], value);
                            live.notify(t, [WIDGETS[widget as usize]]);
                        }
                        Step::Event { tenant } => {
                            let t = &tenants[tenant as usize];
                            live.publish(t, Event::new(EventKind::PaymentReceived, json!({ "tenant": t.as_str() })));
                        }
                        Step::Wait { ms } => sleep(u32::from(ms) * MS).await,
                        Step::Read { index } if !pages.is_empty() => {
                            let index = index as usize % pages.len();
                            check(&mut pages[index])?;
                        }
                        _ => {}
                    }
                }
                sleep(Duration::from_secs(2)).await;
                for page in &mut pages {
                    check(page)?;
                    // ... and every page ends at the database's values.
                    let (subscription, latest) = page;
                    for name in subscription.widgets() {
                        let db_value = db.0.lock().unwrap().values.get(&(subscription.tenant().to_string(), *name)).copied().unwrap_or(0);
                        prop_assert_eq!(latest.get(name).copied(), Some(db_value), "{} of {}", name, subscription.tenant());
                    }
                }
                drop(pages);
                prop_assert_eq!(live.tenants(), 0);
                Ok(())
            })?;
        }
    }
}

#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn a_change_invalidates_the_cache_at_once_even_for_a_tenant_nobody_watches() {
    let db = Db::default();
    let (live, registry, _) = cached_live(&db);
    let t = tenant("t1");
    let read = || async {
        let outcomes = FanOut::new()
            .run(&t, registry.select(["outstanding"]).unwrap())
            .await;
        outcomes[0].value[1].as_i64().unwrap()
    };
    assert_eq!(read().await, 0);
    db.set(&t, "outstanding", 8);
    assert_eq!(read().await, 0, "cached");
    live.notify(&t, ["outstanding"]);
    assert_eq!(live.tenants(), 0);
    assert_eq!(read().await, 8, "invalidated by the change");
}

mod failure_paths {
    //! Where an adversarial review broke an earlier version: a panicking
    //! fallback, a widget re-watched during its refresh, slow and fast
    //! refreshes mixed, a change to a tenant nobody watched, versions of
    //! another tenant or widget list.
    use super::*;

    /// Reads its value when it starts (as an SQL statement's snapshot
    /// does), then takes `latency`.
    struct AtStart {
        name: &'static str,
        db: Db,
    }

    impl DashboardQuery for AtStart {
        type Output = (String, i64);
        type Error = std::io::Error;
        fn name(&self) -> &'static str {
            self.name
        }
        async fn run(&self, ctx: QueryContext) -> Result<(String, i64), std::io::Error> {
            let (value, latency) = {
                let mut db = self.db.0.lock().unwrap();
                *db.runs.entry(ctx.tenant().to_string()).or_default() += 1;
                let value = db
                    .values
                    .get(&(ctx.tenant().to_string(), self.name))
                    .copied()
                    .unwrap_or(0);
                (value, db.latency)
            };
            sleep(latency).await;
            Ok((ctx.tenant().to_string(), value))
        }
        fn fallback(&self) -> (String, i64) {
            (String::new(), -1)
        }
    }

    /// Updates are pushed when refreshes end, so the throttle counts from
    /// a refresh's end: a slow refresh followed by fast ones still pushes
    /// at most 10 updates in any second.
    #[tokio::test(start_paused = true)]
    async fn throttle_limits_pushes_not_only_refresh_starts() {
        let db = Db::default();
        let live = live_with(&db, |b| b);
        let t = tenant("t1");
        let mut page = live.subscribe(&t, ["total_revenue"]).unwrap();
        page.next().await;
        let last = 1200;
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let update = page.next().await;
                seen.push(Instant::now());
                if number(&update, "total_revenue") == Some(last) {
                    return seen;
                }
            }
        });
        db.latency(150 * MS); // one slow refresh (a busy database)...
        db.set(&t, "total_revenue", 1);
        live.notify(&t, ["total_revenue"]);
        settle().await;
        db.latency(10 * MS); // ...then fast ones
        for n in 2..=last {
            sleep(MS).await;
            db.set(&t, "total_revenue", n);
            live.notify(&t, ["total_revenue"]);
        }
        let seen = reader.await.unwrap();
        let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, at) in seen.iter().enumerate() {
            let n = seen[i..]
                .iter()
                .take_while(|later| **later < *at + Duration::from_secs(1))
                .count();
            assert!(n <= 10, "{n} updates within 1 s; gaps {gaps:?}");
        }
    }

    /// A widget unwatched and watched again while a run of it is in flight
    /// ignores that run's (pre-change) result and loads afresh, so the
    /// new subscriber ends at the current value.
    #[tokio::test(start_paused = true)]
    async fn a_widget_watched_again_during_its_refresh_still_converges() {
        let db = Db::default();
        db.latency(50 * MS);
        let mut registry = WidgetRegistry::new();
        for name in ["w", "k"] {
            registry
                .register(AtStart {
                    name,
                    db: db.clone(),
                })
                .unwrap();
        }
        let live = Live::builder(FanOut::new().timeout(Duration::from_secs(2)), registry).build();
        let t = tenant("t1");
        let mut keeper = live.subscribe(&t, ["k"]).unwrap();
        let mut a = live.subscribe(&t, ["w"]).unwrap();
        keeper.next().await;
        a.next().await;
        sleep(Duration::from_secs(1)).await;

        live.notify(&t, ["w"]); // a refresh of w starts, reads 0
        sleep(10 * MS).await;
        drop(a); // w's last watcher leaves (a page reload...)
        db.set(&t, "w", 1); // a payment is committed
        live.notify(&t, ["w"]); // nobody watches w: ignored
        sleep(10 * MS).await;
        let mut c = live.subscribe(&t, ["w"]).unwrap(); // ...the page is back
        let mut latest = number(&c.next().await, "w");
        sleep(Duration::from_secs(5)).await;
        while let Some(update) = c.try_next() {
            latest = number(&update, "w").or(latest);
        }
        assert_eq!(latest, Some(1), "the new page shows the committed value");
    }

    struct Fragile;

    impl DashboardQuery for Fragile {
        type Output = i64;
        type Error = std::io::Error;
        fn name(&self) -> &'static str {
            "fragile"
        }
        async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
            Err(std::io::Error::other("down"))
        }
        fn fallback(&self) -> i64 {
            panic!("no fallback")
        }
    }

    /// A run that panics (a fallback that panics, which FanOut::run
    /// resumes) does not end the tenant's driver: the other widgets'
    /// subscribers keep getting updates.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_fallback_does_not_stop_the_tenants_other_widgets() {
        let db = Db::default();
        let mut registry = WidgetRegistry::new();
        registry.register(Fragile).unwrap();
        registry
            .register(Probe {
                name: "outstanding",
                db: db.clone(),
            })
            .unwrap();
        let live = Live::builder(FanOut::new().timeout(Duration::from_secs(2)), registry).build();
        let t = tenant("t1");
        let mut healthy = live.subscribe(&t, ["outstanding"]).unwrap();
        healthy.next().await;
        let _broken = live.subscribe(&t, ["fragile"]).unwrap();
        settle().await; // the driver loads `fragile` and panics
        db.set(&t, "outstanding", 5);
        live.notify(&t, ["outstanding"]);
        let update = tokio::time::timeout(Duration::from_secs(60), healthy.next()).await;
        assert!(
            update.is_ok(),
            "the healthy widget's subscriber got no update in 60 s"
        );
    }

    /// A version is tied to the tenant and widget list it was seen with:
    /// resuming it on a wider list (or another tenant) gets a snapshot,
    /// not a skip of the widgets the client never received.
    #[tokio::test(start_paused = true)]
    async fn resuming_a_wider_widget_list_gets_what_it_never_saw() {
        let db = Db::default();
        let live = live_with(&db, |b| b);
        let t = tenant("t1");
        db.set(&t, "total_revenue", 42);
        let mut keeper = live
            .subscribe(&t, ["outstanding", "total_revenue"])
            .unwrap();
        keeper.next().await;
        let mut narrow = live.subscribe(&t, ["outstanding"]).unwrap();
        let version = narrow.next().await.version(); // never saw total_revenue
        drop(narrow);
        let mut wider = live
            .subscribe(&t, ["outstanding", "total_revenue"])
            .unwrap()
            .resume_from(version);
        settle().await;
        let first = wider.try_next();
        assert!(
            first
                .as_ref()
                .is_some_and(|u| number(u, "total_revenue") == Some(42)),
            "total_revenue never reaches the wider page: {first:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resuming_with_another_tenants_version_gets_a_snapshot() {
        let db = Db::default();
        let live = live_with(&db, |b| b);
        let (a, b) = (tenant("a"), tenant("b"));
        db.set(&b, "outstanding", 42);
        let mut b_keeper = live.subscribe(&b, ["outstanding"]).unwrap();
        b_keeper.next().await;
        let mut a_page = live.subscribe(&a, ["outstanding"]).unwrap();
        let a_version = a_page.next().await.version();
        live.publish(&b, EventKind::ArrearsAlert.into()); // b moves past a's version
        b_keeper.next().await;
        let mut b_page = live
            .subscribe(&b, ["outstanding"])
            .unwrap()
            .resume_from(a_version);
        let first = b_page.next().await;
        assert_eq!(
            first.kind(),
            "snapshot",
            "a version of tenant a is unknown to tenant b"
        );
    }

    /// With a cache, a change to a tenant nobody watches still invalidates
    /// it: the next subscriber's snapshot is the new value, not the cached
    /// one.
    #[cfg(feature = "cache")]
    #[tokio::test(start_paused = true)]
    async fn a_change_while_nobody_watches_still_invalidates_the_cache() {
        let db = Db::default();
        let (live, _, _) = cached_live(&db);
        let t = tenant("t1");
        let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
        page.next().await; // 0, now cached
        drop(page);

        // The tenant has no subscribers: a NOTIFY from the feed is dropped,
        // and so is the invalidation it stood for.
        db.set(&t, "outstanding", 4);
        live.notify_all(&t);
        let mut page = live.subscribe(&t, ["outstanding"]).unwrap();
        let snapshot = page.next().await;
        let mut latest = number(&snapshot, "outstanding");
        sleep(Duration::from_secs(5)).await;
        while let Some(update) = page.try_next() {
            latest = number(&update, "outstanding").or(latest);
        }
        assert_eq!(latest, Some(4), "snapshot {snapshot:?}");
    }
}
