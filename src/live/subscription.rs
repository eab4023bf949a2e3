//! [`Subscription`]: one open dashboard's view of its tenant's live state.

use std::fmt;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;

use super::room::{Cursor, Room};
use super::{Hub, Update, Version};
use crate::TenantId;

/// An open live dashboard: a snapshot, then updates, for as long as it is
/// kept. Dropping it leaves the tenant's room; the last one out releases
/// the tenant's state and stops its refreshes.
///
/// It holds no queue: only its place in the tenant's state. A subscription
/// that is not read costs nothing but that place, never delays the
/// refreshes or the other subscribers, and when read again gets the latest
/// value of everything that changed meanwhile, merged into one update.
///
/// # Examples
///
/// See the [module](super) docs.
pub struct Subscription {
    pub(super) hub: Arc<Hub>,
    pub(super) room: Arc<Room>,
    pub(super) names: Vec<&'static str>,
    /// The hash of the tenant and `names` its versions carry.
    pub(super) scope: u32,
    pub(super) cursor: Cursor,
    pub(super) published: watch::Receiver<u64>,
}

impl Subscription {
    /// Starts after `version`, the last one this dashboard saw (before a
    /// reconnect): its first item is then only what changed since, or
    /// nothing until something does. When `version` is not known (the
    /// tenant's state was released since, it comes from another process, or
    /// from a subscription to another tenant or another list of widgets, or
    /// a widget was loaded after it), the first item is a snapshot as
    /// usual.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn resume_from(mut self, version: Version) -> Self {
        self.cursor = Cursor::Resume(version);
        self
    }

    /// The next item: waits until there is one.
    ///
    /// Cancel-safe: dropping the future (in a `select!` beside a heartbeat,
    /// say) loses nothing; the next call returns what it would have.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub async fn next(&mut self) -> Update {
        loop {
            self.published.borrow_and_update();
            if let Some(update) = self.try_next() {
                return update;
            }
            if self.published.changed().await.is_err() {
                // The room outlives its subscriptions; unreachable, but
                // waiting forever is the honest answer if it were not.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The next item if there is one now, without waiting.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn try_next(&mut self) -> Option<Update> {
        self.room
            .next_for(&mut self.cursor, &self.names, self.scope, &self.hub.clock)
    }

    /// The items as a [`Stream`] that never ends (drop it to unsubscribe).
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::dynamic::WidgetRegistry;
    /// # use fanout::live::Live;
    /// # use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
    /// use futures_util::StreamExt;
    /// # struct Count;
    /// # impl DashboardQuery for Count {
    /// #     type Output = u32;
    /// #     type Error = std::io::Error;
    /// #     fn name(&self) -> &'static str { "child_count" }
    /// #     async fn run(&self, _: QueryContext) -> Result<u32, std::io::Error> { Ok(7) }
    /// #     fn fallback(&self) -> u32 { 0 }
    /// # }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut registry = WidgetRegistry::new();
    /// # registry.register(Count)?;
    /// # let live = Live::builder(FanOut::new(), registry).build();
    /// let mut updates = Box::pin(live.subscribe_all(&TenantId::new("t1")?)?.into_stream());
    /// let snapshot = updates.next().await.unwrap();
    /// assert_eq!(snapshot.kind(), "snapshot");
    /// # Ok(()) }
    /// ```
    pub fn into_stream(self) -> impl Stream<Item = Update> + Send + 'static {
        futures_util::stream::unfold(self, |mut subscription| async move {
            let update = subscription.next().await;
            Some((update, subscription))
        })
    }

    /// The tenant.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn tenant(&self) -> &TenantId {
        &self.room.tenant
    }

    /// The subscribed widgets' names, in the order updates list them.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn widgets(&self) -> &[&'static str] {
        &self.names
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(&self.room, &self.names);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("tenant", &self.room.tenant)
            .field("widgets", &self.names)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}
