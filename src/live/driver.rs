//! The driver: one task per tenant with subscribers, the only one that runs
//! the tenant's widgets, so a refresh costs one fan-out however many
//! subscribers there are.

use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::json;
use tokio::time::{Instant, timeout_at};

use super::Hub;
use super::room::{Plan, Room};
use super::update::{Event, EventKind};
use crate::DashboardQuery;
use crate::drive::earliest;
use crate::dynamic::Widget;

/// Loads what subscribers wait for at once, and refreshes dirty widgets at
/// most once per throttle interval, leading edge and trailing edge: the
/// first change after a quiet interval goes out at once, changes during an
/// interval (or a refresh) are merged into one refresh at its end.
/// Aborted when the tenant's last subscriber leaves.
pub(super) async fn drive(hub: Arc<Hub>, room: Arc<Room>) {
    let settings = &hub.settings;
    let mut last_refresh: Option<Instant> = None;
    let mut next_tick = settings.refresh_every.map(|every| Instant::now() + every);
    let mut announce = false;
    loop {
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_tick, settings.refresh_every)
            && at <= now
        {
            next_tick = Some(now + every);
            announce = true;
            hub.changed(&room.tenant);
            room.mark_dirty(None);
        }
        match room.plan(now, last_refresh, settings.throttle) {
            Plan::Run { widgets, refresh } => {
                let slots: Vec<(&'static str, u64)> =
                    widgets.iter().map(|(id, w)| (w.name(), *id)).collect();
                let widgets: Vec<Widget> = widgets.into_iter().map(|(_, w)| w).collect();
                // A failed query whose fallback() panics panics the run: that
                // must not end the tenant's driver.
                let run = AssertUnwindSafe(hub.fan_out.run(&room.tenant, widgets)).catch_unwind();
                let (clock, retry) = (&hub.clock, settings.retry_after);
                let changed = match run.await {
                    Ok(outcomes) => {
                        let outcomes = slots
                            .iter()
                            .zip(outcomes)
                            .map(|(&(name, id), o)| (name, id, o));
                        room.apply(outcomes, clock, Instant::now(), retry)
                    }
                    Err(_) => room.apply_panicked(&slots, clock, Instant::now(), retry),
                };
                if refresh {
                    // From the end of the refresh: what is throttled is
                    // how often subscribers get an update.
                    last_refresh = Some(Instant::now());
                }
                if refresh && announce {
                    announce = false;
                    let event =
                        Event::new(EventKind::MetricsUpdated, json!({ "changed": changed }));
                    room.publish(Arc::new(event), &hub.clock, settings.events_kept);
                }
            }
            Plan::Wait(until) => match earliest(until, next_tick) {
                Some(at) => {
                    let _woken_or_due = timeout_at(at, room.woken()).await;
                }
                None => room.woken().await,
            },
        }
    }
}
