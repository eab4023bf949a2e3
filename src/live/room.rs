//! [`Room`]: one tenant's live state, shared by its subscribers and its
//! driver. It exists only while the tenant has subscribers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::update::{Event, Update, WidgetValue};
use super::version::{Clock, Version};
use crate::drive::earliest;
use crate::dynamic::Widget;
use crate::{DashboardQuery, Failure, Outcome, Source, TenantId};

pub(super) struct Room {
    pub(super) tenant: TenantId,
    state: Mutex<State>,
    /// Wakes the driver: a permit is kept when it is busy, so no wake-up is
    /// lost between its look at the state and its wait.
    wake: Notify,
    /// The state's version, for subscribers to wait on: latest only, so a
    /// subscriber never holds a backlog.
    published: watch::Sender<u64>,
}

struct State {
    subscribers: usize,
    /// The version the room was created at: a resume from before it is
    /// unknown.
    base: u64,
    version: u64,
    slots: BTreeMap<&'static str, Slot>,
    /// The last slot's id.
    last_slot: u64,
    dirty: BTreeSet<&'static str>,
    /// Widgets whose last refresh failed, run again at `retry_at`.
    retry: BTreeSet<&'static str>,
    retry_at: Option<Instant>,
    events: VecDeque<(u64, Arc<Event>)>,
    driver: Option<AbortHandle>,
}

/// One watched widget.
struct Slot {
    /// Which incarnation: a slot removed (nobody watched it) and made again
    /// while a run was in flight must not take that run's result, read
    /// before changes the new slot never heard of.
    id: u64,
    widget: Widget,
    watchers: usize,
    value: Option<Arc<WidgetValue>>,
    /// The version of its first value: a resume from before it is unknown.
    loaded_at: u64,
    changed_at: u64,
    /// When its last good value was computed: the age of a kept value.
    good_since: Option<Instant>,
}

/// What the driver does next.
pub(super) enum Plan {
    /// Run these widgets: the ones nobody has a value of yet, and the dirty
    /// ones if `refresh` (the throttle allows it).
    Run {
        widgets: Vec<(u64, Widget)>,
        refresh: bool,
    },
    /// Nothing to do before this instant (or a wake-up).
    Wait(Option<Instant>),
}

/// Where a subscriber is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cursor {
    /// Owed a snapshot.
    Snapshot,
    /// Reconnected with this version: resumed if it is still known.
    Resume(Version),
    /// Has seen everything up to this counter.
    At(u64),
}

impl Room {
    pub(super) fn new(tenant: TenantId, base: u64) -> Self {
        Self {
            tenant,
            state: Mutex::new(State {
                subscribers: 0,
                base,
                version: base,
                slots: BTreeMap::new(),
                last_slot: 0,
                dirty: BTreeSet::new(),
                retry: BTreeSet::new(),
                retry_at: None,
                events: VecDeque::new(),
                driver: None,
            }),
            wake: Notify::new(),
            published: watch::Sender::new(base),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock's state is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_driver(&self, driver: AbortHandle) {
        self.state().driver = Some(driver);
    }

    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub(super) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// A subscriber of `widgets` arrives.
    pub(super) fn join(&self, widgets: &[Widget]) {
        let mut state = self.state();
        let state = &mut *state;
        state.subscribers += 1;
        let mut unloaded = false;
        for widget in widgets {
            let last_slot = &mut state.last_slot;
            let slot = state.slots.entry(widget.name()).or_insert_with(|| Slot {
                id: {
                    *last_slot += 1;
                    *last_slot
                },
                widget: widget.clone(),
                watchers: 0,
                value: None,
                loaded_at: 0,
                changed_at: 0,
                good_since: None,
            });
            slot.watchers += 1;
            unloaded |= slot.value.is_none();
        }
        if unloaded {
            self.wake.notify_one();
        }
    }

    /// A subscriber of `names` leaves. When it was the last, returns the
    /// driver to stop.
    pub(super) fn leave(&self, names: &[&'static str]) -> Option<Option<AbortHandle>> {
        let mut state = self.state();
        state.subscribers -= 1;
        for name in names {
            let Some(slot) = state.slots.get_mut(name) else {
                continue;
            };
            slot.watchers -= 1;
            if slot.watchers == 0 {
                state.slots.remove(name);
                state.dirty.remove(name);
                state.retry.remove(name);
            }
        }
        (state.subscribers == 0).then(|| state.driver.take())
    }

    pub(super) fn subscribers(&self) -> usize {
        self.state().subscribers
    }

    /// Marks `names` (every watched widget for `None`) for a refresh.
    pub(super) fn mark_dirty(&self, names: Option<&[&str]>) {
        let mut state = self.state();
        let state = &mut *state;
        let before = state.dirty.len();
        match names {
            None => state.dirty.extend(state.slots.keys().copied()),
            Some(names) => {
                for name in names {
                    if let Some((&name, _)) = state.slots.get_key_value(*name) {
                        state.dirty.insert(name);
                    }
                }
            }
        }
        let grew = state.dirty.len() > before;
        if grew {
            self.wake.notify_one();
        }
    }

    /// Relays `event` to the subscribers, keeping at most `kept` events for
    /// the ones that have not read it yet.
    pub(super) fn publish(&self, event: Arc<Event>, clock: &Clock, kept: usize) {
        let mut state = self.state();
        let version = clock.tick();
        state.events.push_back((version, event));
        while state.events.len() > kept {
            state.events.pop_front();
        }
        state.version = version;
        self.published.send_replace(version);
    }

    /// What the driver should do at `now`, its last refresh having started
    /// at `last_refresh`.
    pub(super) fn plan(
        &self,
        now: Instant,
        last_refresh: Option<Instant>,
        throttle: Duration,
    ) -> Plan {
        let mut state = self.state();
        let state = &mut *state;
        if state.retry_at.is_some_and(|at| at <= now) {
            state.retry_at = None;
            let retry = std::mem::take(&mut state.retry);
            state.dirty.extend(retry);
        }
        let refresh_at = last_refresh.map(|at| at + throttle);
        let refresh = !state.dirty.is_empty() && refresh_at.is_none_or(|at| at <= now);
        let mut names: Vec<&'static str> = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.value.is_none())
            .map(|(name, _)| *name)
            .collect();
        for name in &names {
            state.dirty.remove(name);
        }
        if refresh {
            names.extend(std::mem::take(&mut state.dirty));
        }
        if names.is_empty() {
            let refresh_at = (!state.dirty.is_empty()).then_some(refresh_at).flatten();
            return Plan::Wait(earliest(refresh_at, state.retry_at));
        }
        let widgets = names
            .iter()
            .map(|name| {
                let slot = &state.slots[name];
                (slot.id, slot.widget.clone())
            })
            .collect();
        Plan::Run { widgets, refresh }
    }

    /// Takes in what a run computed at `now`: a widget that shows something
    /// new gets a new version; one that failed keeps its last good value
    /// (as `stale`) and is retried `retry_after` later. Returns the names
    /// of the widgets that changed.
    pub(super) fn apply(
        &self,
        outcomes: impl IntoIterator<Item = (&'static str, u64, Outcome<Value>)>,
        clock: &Clock,
        now: Instant,
        retry_after: Duration,
    ) -> Vec<&'static str> {
        let mut state = self.state();
        let state = &mut *state;
        let mut changed = Vec::new();
        for (name, id, outcome) in outcomes {
            let Some(slot) = state.slots.get_mut(name).filter(|slot| slot.id == id) else {
                continue;
            };
            let age = match outcome.source {
                Source::Cached { age } | Source::Refreshing { age } => age,
                _ => Duration::ZERO,
            };
            let mut next = WidgetValue::new(name, outcome);
            match (next.cause, &slot.value, slot.good_since) {
                (None, ..) => slot.good_since = Some(now.checked_sub(age).unwrap_or(now)),
                (Some(cause), Some(last), Some(good_since)) if next.source == "fallback" => {
                    next = last.kept(now - good_since, cause, next.elapsed_ms);
                }
                _ => {}
            }
            if next.is_degraded() {
                state.retry.insert(name);
            }
            if slot
                .value
                .as_ref()
                .is_none_or(|last| !last.shows_same(&next))
            {
                slot.value = Some(Arc::new(next));
                changed.push(name);
            }
        }
        if !state.retry.is_empty() && state.retry_at.is_none() {
            state.retry_at = Some(now + retry_after);
        }
        if !changed.is_empty() {
            let version = clock.tick();
            for name in &changed {
                let slot = state.slots.get_mut(name).expect("changed slots exist");
                slot.changed_at = version;
                if slot.loaded_at == 0 {
                    slot.loaded_at = version;
                }
            }
            state.version = version;
            self.published.send_replace(version);
        }
        changed
    }

    /// Takes in a run that panicked (a failed query's `fallback()` did):
    /// each widget keeps its last good value as `stale`, or shows `null`
    /// as its fallback, and is retried `retry_after` later.
    pub(super) fn apply_panicked(
        &self,
        widgets: &[(&'static str, u64)],
        clock: &Clock,
        now: Instant,
        retry_after: Duration,
    ) -> Vec<&'static str> {
        let outcomes: Vec<_> = widgets
            .iter()
            .map(|&(name, id)| {
                let failure = Failure::Panicked("the run panicked".to_owned());
                let source = Source::Fallback(failure);
                (
                    name,
                    id,
                    Outcome::new(Value::Null, source, Duration::ZERO, Duration::ZERO),
                )
            })
            .collect();
        self.apply(outcomes, clock, now, retry_after)
    }

    /// The next item for a subscriber of `names` at `cursor`, advancing it;
    /// `None` when it has seen everything there is.
    pub(super) fn next_for(
        &self,
        cursor: &mut Cursor,
        names: &[&'static str],
        scope: u32,
        clock: &Clock,
    ) -> Option<Update> {
        let state = self.state();
        let slots = || names.iter().map(|name| &state.slots[name]);
        if let Cursor::Resume(version) = *cursor {
            *cursor = match clock.counter_of(version, scope) {
                Some(at)
                    if (state.base..=state.version).contains(&at)
                        && slots().all(|slot| slot.value.is_some() && slot.loaded_at <= at) =>
                {
                    Cursor::At(at)
                }
                _ => Cursor::Snapshot,
            };
        }
        let seen = match *cursor {
            Cursor::At(seen) => seen,
            _ => {
                // Owed a snapshot: once every widget has its first value.
                let widgets = slots()
                    .map(|slot| slot.value.clone())
                    .collect::<Option<_>>()?;
                *cursor = Cursor::At(state.version);
                return Some(Update::Snapshot {
                    version: clock.version(scope, state.version),
                    widgets,
                });
            }
        };
        let changed_before = |limit: u64| -> Vec<Arc<WidgetValue>> {
            slots()
                .filter(|slot| slot.changed_at > seen && slot.changed_at < limit)
                .filter_map(|slot| slot.value.clone())
                .collect()
        };
        if let Some((at, event)) = state.events.iter().find(|(at, _)| *at > seen) {
            // Widgets that changed before the event go first, so a
            // subscriber that stops here and resumes from this version has
            // missed nothing.
            let widgets = changed_before(*at);
            if !widgets.is_empty() {
                *cursor = Cursor::At(at - 1);
                return Some(Update::Widgets {
                    version: clock.version(scope, at - 1),
                    widgets,
                });
            }
            *cursor = Cursor::At(*at);
            return Some(Update::Event {
                version: clock.version(scope, *at),
                event: Arc::clone(event),
            });
        }
        let widgets = changed_before(u64::MAX);
        if widgets.is_empty() {
            return None;
        }
        *cursor = Cursor::At(state.version);
        Some(Update::Widgets {
            version: clock.version(scope, state.version),
            widgets,
        })
    }
}
