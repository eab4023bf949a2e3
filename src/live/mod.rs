//! Live dashboards (feature `live`): every open dashboard of a tenant
//! updated when its data changes, at the cost of one refresh per tenant
//! however many dashboards are open.
//!
//! A [`Live`] keeps, for each tenant with subscribers, the current value of
//! each subscribed [`dynamic`](crate::dynamic) widget. [`Live::subscribe`]
//! gives a [`Subscription`]: first a snapshot (served from memory when
//! another subscriber already has one; otherwise one load serves everyone
//! who arrives together), then [`Update`]s. [`Live::notify`] marks widgets
//! of a tenant changed, from anywhere in the process; the tenant's driver
//! re-runs only those, through the [`FanOut`] (its timeouts, deadline,
//! limiter and fallbacks), and pushes only the widgets whose value
//! changed. [`Live::publish`] relays a domain [`Event`] to the tenant's
//! subscribers. With the `postgres` feature, [`ChangeFeed`] turns
//! PostgreSQL `NOTIFY`s into both.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use std::time::Duration;
//!
//! use fanout::dynamic::WidgetRegistry;
//! use fanout::live::{Live, Update};
//! use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
//! use serde_json::json;
//!
//! /// Stands in for `SELECT sum(amount) FROM payments WHERE tenant_id = $1`.
//! struct Revenue(Arc<AtomicI64>);
//!
//! impl DashboardQuery for Revenue {
//!     type Output = i64;
//!     type Error = std::io::Error;
//!     fn name(&self) -> &'static str { "total_revenue" }
//!     async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
//!         Ok(self.0.load(Ordering::SeqCst))
//!     }
//!     fn fallback(&self) -> i64 { 0 }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let revenue = Arc::new(AtomicI64::new(100));
//! let mut registry = WidgetRegistry::new();
//! registry.register(Revenue(Arc::clone(&revenue)))?;
//! let fan_out = FanOut::new().timeout(Duration::from_secs(2)).deadline(Duration::from_secs(3));
//! let live = Live::builder(fan_out, registry).build();
//!
//! let tenant = TenantId::new("creche-042")?;
//! let mut page = live.subscribe(&tenant, ["total_revenue"])?;
//! let Update::Snapshot { widgets, version } = page.next().await else { panic!() };
//! assert_eq!(widgets[0].value, json!(100));
//!
//! // A payment is committed; whoever committed it says so.
//! revenue.store(150, Ordering::SeqCst);
//! live.notify(&tenant, ["total_revenue"]);
//! let update = page.next().await;
//! assert_eq!(update.kind(), "widgets");
//! assert_eq!(update.widgets()[0].value, json!(150));
//!
//! // A second page of the same tenant gets the snapshot from memory; one
//! // that reconnects with its last version gets only what changed since.
//! let mut other = live.subscribe(&tenant, ["total_revenue"])?;
//! assert_eq!(other.next().await.widgets()[0].value, json!(150));
//! let mut back = live.subscribe(&tenant, ["total_revenue"])?.resume_from(version);
//! assert_eq!(back.next().await.kind(), "widgets"); // the change to 150, not a snapshot
//! assert_eq!(live.tenants(), 1);
//! drop((page, other, back));
//! assert_eq!(live.tenants(), 0); // nothing kept for a tenant nobody watches
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! What is promised is the **latest state**, not every intermediate event:
//!
//! - Every subscriber converges to the current value of each of its
//!   widgets: after the last change of a burst (its trailing edge), a
//!   refresh always runs, and its result reaches every subscriber.
//! - Changes are throttled per tenant, leading edge and trailing edge
//!   ([`Builder::throttle`], 100 ms by default: at most ten refreshes a
//!   second): the first change after a quiet interval is refreshed at
//!   once, and changes during an interval are merged into one refresh at
//!   its end. Each refresh runs once for the tenant, whatever its number of
//!   subscribers.
//! - A subscriber that reads slowly, or not at all, delays nobody and holds
//!   no backlog: when it reads again it gets one update with the latest
//!   value of each widget that changed meanwhile.
//! - Versions increase: an item's [`Update::version`] is where a
//!   reconnecting subscriber resumes ([`Subscription::resume_from`]). It
//!   then gets what changed since, or a full snapshot when that is no
//!   longer known (the tenant's state is released with its last
//!   subscriber: there is no event log).
//! - Events are relayed in order to the tenant's subscribers and never to
//!   another tenant's. They are not state: the last
//!   [`Builder::events_kept`] (64) are kept for slow readers and resumes,
//!   older ones are lost to a subscriber that has not read them.
//! - A widget whose refresh fails keeps its last good value, shown
//!   `stale` with the failure's cause, and is retried a second later
//!   ([`Builder::retry_after`]); with no good value yet it shows its
//!   fallback, as in a fan-out.
//! - A refresh is as bounded as any fan-out: it cannot outlive the
//!   [`FanOut`]'s deadline.
//!
//! Values are compared as shown (value, source and cause, not timings):
//! a refresh that finds nothing new pushes nothing.
//!
//! [`FanOut`]: crate::FanOut

mod change;
mod driver;
#[cfg(feature = "postgres")]
mod feed;
mod room;
mod subscription;
mod update;
mod version;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use change::{Change, InvalidChange};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use feed::{ChangeFeed, FeedHandle, InvalidChannel};
pub use subscription::Subscription;
pub use update::{Event, EventKind, UnknownEventKind, Update, WidgetValue};
pub use version::{InvalidVersion, Version};

use crate::dynamic::{WidgetRegistry, WidgetSetError};
use crate::{FanOut, TenantId};
use room::{Cursor, Room};
use version::Clock;

/// The live dashboards of every tenant of a service. Cloning is cheap and
/// shares them.
///
/// # Examples
///
/// See the [module](self) docs.
#[derive(Clone)]
pub struct Live {
    hub: Arc<Hub>,
}

/// How a [`Live`] behaves; see [`Live::builder`].
///
/// # Examples
///
/// ```
/// # use std::time::Duration;
/// # use fanout::{FanOut, dynamic::WidgetRegistry, live::Live};
/// let live = Live::builder(FanOut::new(), WidgetRegistry::new())
///     .throttle(Duration::from_millis(250))
///     .refresh_every(Duration::from_secs(60))
///     .build();
/// # drop(live);
/// ```
pub struct Builder {
    fan_out: FanOut,
    registry: WidgetRegistry,
    settings: Settings,
    on_change: Option<OnChange>,
}

/// Called with the tenant of every change: see [`Builder::on_change`].
type OnChange = Arc<dyn Fn(&TenantId) + Send + Sync>;

#[derive(Clone, Copy, Debug)]
struct Settings {
    throttle: Duration,
    refresh_every: Option<Duration>,
    retry_after: Duration,
    events_kept: usize,
}

struct Hub {
    fan_out: FanOut,
    registry: WidgetRegistry,
    settings: Settings,
    on_change: Option<OnChange>,
    clock: Clock,
    rooms: Mutex<HashMap<TenantId, Arc<Room>>>,
}

/// Why [`Live::subscribe`] refused.
///
/// # Examples
///
/// ```
/// # use fanout::{FanOut, TenantId, dynamic::WidgetRegistry, live::{Live, SubscribeError}};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
/// let refused = live.subscribe(&TenantId::new("t1")?, ["arrears"]).unwrap_err();
/// assert!(matches!(refused, SubscribeError::Widgets(_)));
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// An unknown, repeated or empty widget list.
    #[error(transparent)]
    Widgets(#[from] WidgetSetError),
    /// Called outside a Tokio runtime: the tenant's refreshes run on a task
    /// of their own.
    #[error("live dashboards need a Tokio runtime (subscribe from within one)")]
    NoRuntime,
}

impl Live {
    /// Live dashboards of the widgets in `registry`, each refresh run by
    /// `fan_out`.
    ///
    /// # Examples
    ///
    /// See [`Builder`].
    pub fn builder(fan_out: FanOut, registry: WidgetRegistry) -> Builder {
        Builder {
            fan_out,
            registry,
            settings: Settings {
                throttle: Duration::from_millis(100),
                refresh_every: None,
                retry_after: Duration::from_secs(1),
                events_kept: 64,
            },
            on_change: None,
        }
    }

    /// Subscribes to `tenant`'s `widgets`, which updates list in that
    /// order.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::Widgets`] for an unknown, repeated or empty widget
    /// list; [`SubscribeError::NoRuntime`] outside a Tokio runtime.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn subscribe<S: AsRef<str>>(
        &self,
        tenant: &TenantId,
        widgets: impl IntoIterator<Item = S>,
    ) -> Result<Subscription, SubscribeError> {
        let widgets = self.hub.registry.select(widgets)?;
        self.join(tenant, widgets)
    }

    /// Subscribes to every widget of the registry, in alphabetical order.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    ///
    /// # Examples
    ///
    /// See [`Subscription::into_stream`].
    pub fn subscribe_all(&self, tenant: &TenantId) -> Result<Subscription, SubscribeError> {
        let widgets = self.hub.registry.all();
        if widgets.is_empty() {
            return Err(WidgetSetError::Empty.into());
        }
        self.join(tenant, widgets)
    }

    fn join(
        &self,
        tenant: &TenantId,
        widgets: Vec<crate::dynamic::Widget>,
    ) -> Result<Subscription, SubscribeError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SubscribeError::NoRuntime)?;
        let names: Vec<&'static str> = widgets.iter().map(crate::DashboardQuery::name).collect();
        let scope = version::scope(tenant.as_str(), &names);
        let mut rooms = self.hub.rooms();
        let room = match rooms.get(tenant) {
            Some(room) => Arc::clone(room),
            None => {
                let room = Arc::new(Room::new(tenant.clone(), self.hub.clock.tick()));
                let driver = runtime.spawn(driver::drive(Arc::clone(&self.hub), Arc::clone(&room)));
                room.set_driver(driver.abort_handle());
                rooms.insert(tenant.clone(), Arc::clone(&room));
                room
            }
        };
        room.join(&widgets);
        drop(rooms);
        Ok(Subscription {
            hub: Arc::clone(&self.hub),
            published: room.watch(),
            room,
            names,
            scope,
            cursor: Cursor::Snapshot,
        })
    }

    /// Marks `widgets` of `tenant` changed: refreshed at once, or at the end
    /// of the throttle interval if one ran less than that ago. Names the
    /// tenant's subscribers do not watch are ignored, and so is a tenant
    /// with no subscribers.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn notify<S: AsRef<str>>(&self, tenant: &TenantId, widgets: impl IntoIterator<Item = S>) {
        self.hub.changed(tenant);
        if let Some(room) = self.hub.room(tenant) {
            let names: Vec<S> = widgets.into_iter().collect();
            let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
            room.mark_dirty(Some(&names));
        }
    }

    /// Marks every widget of `tenant` changed (see [`notify`](Self::notify)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, TenantId, dynamic::WidgetRegistry, live::Live};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
    /// live.notify_all(&TenantId::new("t1")?); // no subscribers: nothing to do
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn notify_all(&self, tenant: &TenantId) {
        self.hub.changed(tenant);
        if let Some(room) = self.hub.room(tenant) {
            room.mark_dirty(None);
        }
    }

    /// Marks every widget of every tenant with subscribers changed: after
    /// a change feed missed notifications (a reconnect), so that everyone
    /// converges. The [`on_change`](Builder::on_change) hook runs for those
    /// tenants only: other tenants' cached values catch up within their
    /// TTL.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, dynamic::WidgetRegistry, live::Live};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
    /// live.notify_everyone();
    /// ```
    pub fn notify_everyone(&self) {
        let rooms: Vec<Arc<Room>> = self.hub.rooms().values().cloned().collect();
        for room in rooms {
            self.hub.changed(&room.tenant);
            room.mark_dirty(None);
        }
    }

    /// Relays `event` to `tenant`'s subscribers (none if it has none: an
    /// event is not kept for later ones).
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, TenantId, dynamic::WidgetRegistry, live::{EventKind, Live}};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
    /// live.publish(&TenantId::new("t1")?, EventKind::ArrearsAlert.into());
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn publish(&self, tenant: &TenantId, event: Event) {
        if let Some(room) = self.hub.room(tenant) {
            let kept = self.hub.settings.events_kept;
            room.publish(Arc::new(event), &self.hub.clock, kept);
        }
    }

    /// Applies a [`Change`]: marks its widgets changed and relays its
    /// event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, dynamic::WidgetRegistry, live::{Change, Live}};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
    /// live.apply(&Change::parse(r#"{"tenant":"t1","event":"payment_received"}"#)?);
    /// # Ok::<(), fanout::live::InvalidChange>(())
    /// ```
    pub fn apply(&self, change: &Change) {
        match &change.widgets {
            Some(names) => self.notify(&change.tenant, names),
            None => self.notify_all(&change.tenant),
        }
        if let Some(event) = &change.event {
            self.publish(&change.tenant, event.clone());
        }
    }

    /// How many tenants have subscribers (and so state and a driver).
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn tenants(&self) -> usize {
        self.hub.rooms().len()
    }

    /// How many subscriptions `tenant` has.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, TenantId, dynamic::WidgetRegistry, live::Live};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
    /// assert_eq!(live.subscribers(&TenantId::new("t1")?), 0);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn subscribers(&self, tenant: &TenantId) -> usize {
        self.hub.room(tenant).map_or(0, |room| room.subscribers())
    }
}

impl Builder {
    /// The least time between two refreshes of a tenant (100 ms by
    /// default: ten a second). Zero refreshes on every change.
    ///
    /// # Examples
    ///
    /// See [`Builder`].
    pub fn throttle(mut self, interval: Duration) -> Self {
        self.settings.throttle = interval;
        self
    }

    /// Also refreshes every widget of each tenant with subscribers every
    /// `interval`, announcing it with a `metrics_updated` event. Off by
    /// default: refreshes follow changes.
    ///
    /// # Examples
    ///
    /// See [`Builder`].
    pub fn refresh_every(mut self, interval: Duration) -> Self {
        self.settings.refresh_every = Some(interval).filter(|every| !every.is_zero());
        self
    }

    /// How long after a failed refresh a widget is refreshed again (1 s by
    /// default).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use fanout::{FanOut, dynamic::WidgetRegistry, live::Live};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new())
    ///     .retry_after(Duration::from_secs(5))
    ///     .build();
    /// # drop(live);
    /// ```
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.settings.retry_after = delay;
        self
    }

    /// How many of a tenant's latest events are kept for subscribers that
    /// have not read them yet (64 by default).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::num::NonZeroUsize;
    /// # use fanout::{FanOut, dynamic::WidgetRegistry, live::Live};
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new())
    ///     .events_kept(NonZeroUsize::new(16).unwrap())
    ///     .build();
    /// # drop(live);
    /// ```
    pub fn events_kept(mut self, events: NonZeroUsize) -> Self {
        self.settings.events_kept = events.get();
        self
    }

    /// Calls `hook` with the tenant of every change
    /// ([`notify`](Live::notify), [`notify_all`](Live::notify_all),
    /// [`apply`](Live::apply), a change feed notification, an interval
    /// refresh), at once and whether or not the tenant has subscribers: the
    /// place to invalidate caches that other readers share, such as a
    /// Redis tier. It runs on the notifier's thread, so it must not block.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// # use fanout::{FanOut, TenantId, dynamic::WidgetRegistry, live::Live};
    /// let changes = Arc::new(AtomicUsize::new(0));
    /// let counted = Arc::clone(&changes);
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new())
    ///     .on_change(move |_tenant| { counted.fetch_add(1, Ordering::Relaxed); })
    ///     .build();
    /// live.notify_all(&TenantId::new("t1")?);
    /// assert_eq!(changes.load(Ordering::Relaxed), 1);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn on_change(mut self, hook: impl Fn(&TenantId) + Send + Sync + 'static) -> Self {
        let previous = self.on_change.take();
        self.on_change = Some(Arc::new(move |tenant: &TenantId| {
            if let Some(previous) = &previous {
                previous(tenant);
            }
            hook(tenant);
        }));
        self
    }

    /// Invalidates the tenant in `cache` on every change (see
    /// [`on_change`](Self::on_change)), so that widgets wrapped in
    /// [`Cached`](crate::cache::Cached) compute afresh, in the refresh and
    /// for every other reader of the cache.
    ///
    /// The whole tenant moves to a new generation, not only the changed
    /// widgets: that is what makes invalidation race-free against loads
    /// already in flight (see [`QueryCache::invalidate_tenant`]).
    ///
    /// [`QueryCache::invalidate_tenant`]: crate::cache::QueryCache::invalidate_tenant
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{FanOut, cache::QueryCache, dynamic::WidgetRegistry, live::Live};
    /// let cache = QueryCache::new(10_000);
    /// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).cache(cache.clone()).build();
    /// # drop(live);
    /// ```
    #[cfg(feature = "cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
    pub fn cache(self, cache: crate::cache::QueryCache) -> Self {
        self.on_change(move |tenant| cache.invalidate_tenant(tenant))
    }

    /// The live dashboards.
    ///
    /// # Examples
    ///
    /// See [`Builder`].
    pub fn build(self) -> Live {
        Live {
            hub: Arc::new(Hub {
                fan_out: self.fan_out,
                registry: self.registry,
                settings: self.settings,
                on_change: self.on_change,
                clock: Clock::new(),
                rooms: Mutex::default(),
            }),
        }
    }
}

impl Hub {
    fn rooms(&self) -> MutexGuard<'_, HashMap<TenantId, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn room(&self, tenant: &TenantId) -> Option<Arc<Room>> {
        self.rooms().get(tenant).cloned()
    }

    /// A subscriber of `room` leaves; the last one out removes the room and
    /// stops its driver.
    fn leave(&self, room: &Arc<Room>, names: &[&'static str]) {
        let mut rooms = self.rooms();
        if let Some(driver) = room.leave(names) {
            if rooms
                .get(&room.tenant)
                .is_some_and(|r| Arc::ptr_eq(r, room))
            {
                rooms.remove(&room.tenant);
            }
            if let Some(driver) = driver {
                driver.abort();
            }
        }
    }

    fn changed(&self, tenant: &TenantId) {
        if let Some(hook) = &self.on_change {
            hook(tenant);
        }
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("fan_out", &self.fan_out)
            .field("registry", &self.registry)
            .field("settings", &self.settings)
            .field("on_change", &self.on_change.is_some())
            .finish()
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("settings", &self.hub.settings)
            .field("tenants", &self.tenants())
            .finish_non_exhaustive()
    }
}
