//! [`ChangeFeed`]: PostgreSQL `NOTIFY` as the change feed of live
//! dashboards, on a dedicated connection that reconnects by itself.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use super::{Change, Live};

/// A connection attempt that takes longer has failed.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// A connection that listened this long was healthy: the backoff starts
/// over after it.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connecting took over {} s", CONNECT_WITHIN.as_secs())]
    ConnectTimedOut,
}

/// Listens on a PostgreSQL channel and applies each notification to a
/// [`Live`]: the payload is a [`Change`] (see [`Change::parse`]: a tenant
/// id, or a JSON object naming the tenant, the changed widgets and an
/// event). A payload that is not one is logged at WARN and ignored.
///
/// It uses a connection of its own, not a pooled one: a pool's connections
/// are driven by tasks that drop notifications, and a listening connection
/// must stay open. When it breaks (or a connection attempt takes over
/// 10 s), it reconnects with exponential backoff and full jitter (100 ms
/// doubling to 10 s by default, starting over once a connection has
/// listened for 30 s). PostgreSQL delivers nothing that was sent while no one
/// listened, so each time listening (re)starts, every tenant with
/// subscribers is marked changed: subscribers converge to the database's
/// values whatever was missed.
///
/// Every instance of a service listens, so all of them stay in step
/// through PostgreSQL, with no other broker.
///
/// # Sending changes
///
/// From a trigger, after the row is written (the notification is delivered
/// when the transaction commits, and not at all if it rolls back):
///
/// ```sql
/// CREATE FUNCTION notify_payment() RETURNS trigger LANGUAGE plpgsql AS $$
/// BEGIN
///     PERFORM pg_notify('dashboard_changes', json_build_object(
///         'tenant', NEW.tenant_id,
///         'widgets', json_build_array('total_revenue', 'recent_payments'),
///         'event', 'payment_received',
///         'data', json_build_object('amount_cents', NEW.amount_cents))::text);
///     RETURN NEW;
/// END $$;
/// CREATE TRIGGER payments_notify AFTER INSERT ON payments
///     FOR EACH ROW EXECUTE FUNCTION notify_payment();
/// ```
///
/// Trade-offs to know:
///
/// - `NOTIFY` takes a lock on a queue shared by the whole database at
///   commit, so under heavy write rates it serialises committing
///   transactions. A row-level trigger on a hot table pays that on every
///   row: prefer a statement-level trigger, or notify from the application
///   after its commit ([`Live::apply`] in the same process, or `SELECT
///   pg_notify(...)` in a transaction of its own for the other instances).
/// - A payload is at most 8000 bytes: send what changed, not the data.
/// - Identical notifications within one transaction are delivered once.
/// - Notifications sent while the feed is reconnecting are lost; the
///   refresh of every subscribed tenant after reconnecting makes up for
///   them (state converges; events sent meanwhile are not replayed).
/// - A half-open connection (a network partition) is noticed only by TCP
///   keepalives: set [`Config::keepalives_idle`] to how soon you want to
///   know.
///
/// # Examples
///
/// ```no_run
/// # use fanout::{FanOut, dynamic::WidgetRegistry, live::{ChangeFeed, Live}};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let live = Live::builder(FanOut::new(), WidgetRegistry::new()).build();
/// let config: tokio_postgres::Config = "host=localhost user=app dbname=app".parse()?;
/// let feed = ChangeFeed::new(config, "dashboard_changes")?.spawn(&live)?;
/// // ... serve; dropping `feed` stops listening.
/// # drop(feed);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    config: Config,
    channel: String,
    first_delay: Duration,
    max_delay: Duration,
}

/// A channel name that is not a plain SQL identifier.
///
/// # Examples
///
/// ```
/// let config: tokio_postgres::Config = "host=localhost".parse().unwrap();
/// let error = fanout::live::ChangeFeed::new(config, "changes; DROP TABLE x").unwrap_err();
/// assert_eq!(error.to_string(), "`changes; DROP TABLE x` is not a channel name (letters, digits and `_`, not starting with a digit, at most 63 bytes)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a channel name (letters, digits and `_`, not starting with a digit, at most 63 bytes)"
)]
pub struct InvalidChannel(String);

/// A running [`ChangeFeed`]. Dropping it stops listening.
///
/// # Examples
///
/// See [`ChangeFeed`].
#[derive(Debug)]
pub struct FeedHandle {
    task: JoinHandle<()>,
    status: Arc<Status>,
}

#[derive(Debug, Default)]
struct Status {
    listening: AtomicBool,
    sessions: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
}

impl ChangeFeed {
    /// A feed of the notifications on `channel` of the database `config`
    /// points at.
    ///
    /// # Errors
    ///
    /// [`InvalidChannel`] unless `channel` is a plain identifier: ASCII
    /// letters, digits and `_`. It is quoted in the `LISTEN` statement, so
    /// its case is kept (as `pg_notify('Name', ...)` keeps it) and a
    /// reserved word is a channel like any other.
    ///
    /// # Examples
    ///
    /// See [`ChangeFeed`].
    pub fn new(config: Config, channel: &str) -> Result<Self, InvalidChannel> {
        let plain = channel.len() <= 63
            && channel
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(InvalidChannel(channel.chars().take(80).collect()));
        }
        Ok(Self {
            config,
            channel: channel.to_owned(),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
        })
    }

    /// Reconnects after a delay drawn at random below `first`, doubling
    /// after each failed attempt up to `max`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config: tokio_postgres::Config = "host=localhost".parse().unwrap();
    /// let feed = fanout::live::ChangeFeed::new(config, "changes")?
    ///     .backoff(Duration::from_millis(50), Duration::from_secs(30));
    /// # drop(feed);
    /// # Ok::<(), fanout::live::InvalidChannel>(())
    /// ```
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_delay = first;
        self.max_delay = max.max(first);
        self
    }

    /// Starts listening on a task of its own, applying notifications to
    /// `live`.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::NoRuntime`](super::SubscribeError::NoRuntime)
    /// outside a Tokio runtime.
    ///
    /// # Examples
    ///
    /// See [`ChangeFeed`].
    pub fn spawn(self, live: &Live) -> Result<FeedHandle, super::SubscribeError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| super::SubscribeError::NoRuntime)?;
        let status = Arc::new(Status::default());
        let task = runtime.spawn(self.run(live.clone(), Arc::clone(&status)));
        Ok(FeedHandle { task, status })
    }

    async fn run(self, live: Live, status: Arc<Status>) {
        let mut failures: u32 = 0;
        loop {
            let mut since = None;
            let ended = self.session(&live, &status, &mut since).await;
            status.listening.store(false, Ordering::Relaxed);
            // Start the backoff over only after a connection that lasted:
            // a server that accepts and drops at once gets the backoff.
            if since.is_some_and(|since| since.elapsed() >= STABLE_AFTER) {
                failures = 0;
            }
            let ceiling = self
                .first_delay
                .saturating_mul(1 << failures.min(20))
                .min(self.max_delay);
            failures = failures.saturating_add(1);
            let delay = ceiling.mul_f64(fastrand::f64());
            match ended {
                Ok(()) => tracing::warn!(
                    channel = %self.channel,
                    retry_in_ms = delay.as_millis() as u64,
                    "change feed: the server closed the connection; reconnecting"
                ),
                Err(error) => tracing::warn!(
                    channel = %self.channel,
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "change feed: connection failed; reconnecting"
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection: `LISTEN`, then apply notifications until it breaks.
    async fn session(
        &self,
        live: &Live,
        status: &Status,
        since: &mut Option<Instant>,
    ) -> Result<(), SessionError> {
        let connect = tokio::time::timeout(CONNECT_WITHIN, self.config.connect(NoTls));
        let Ok(connected) = connect.await else {
            return Err(SessionError::ConnectTimedOut);
        };
        let (client, mut connection) = connected?;
        // Quoted: `pg_notify` takes the name as it is, case and all.
        let statement = format!("LISTEN \"{}\"", self.channel);
        let mut listen = pin!(client.batch_execute(&statement));
        let mut listening = false;
        let listening_since = &mut *since;
        poll_fn(|cx| {
            if !listening && let Poll::Ready(result) = listen.as_mut().poll(cx) {
                result?;
                listening = true;
                *listening_since = Some(Instant::now());
                status.listening.store(true, Ordering::Relaxed);
                status.sessions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(channel = %self.channel, "change feed: listening");
                // Whatever was sent before now was not heard.
                live.notify_everyone();
            }
            loop {
                match connection.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(notification)))) => {
                        apply(live, status, notification.payload());
                    }
                    Poll::Ready(Some(Ok(_notice))) => {}
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error.into())),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }
}

fn apply(live: &Live, status: &Status, payload: &str) {
    match Change::parse(payload) {
        Ok(change) => {
            status.applied.fetch_add(1, Ordering::Relaxed);
            live.apply(&change);
        }
        Err(error) => {
            status.rejected.fetch_add(1, Ordering::Relaxed);
            let payload: String = payload.chars().take(200).collect();
            tracing::warn!(%error, payload, "change feed: ignored a malformed notification");
        }
    }
}

impl FeedHandle {
    /// Whether it is listening now.
    ///
    /// # Examples
    ///
    /// See [`ChangeFeed`].
    pub fn is_listening(&self) -> bool {
        self.status.listening.load(Ordering::Relaxed)
    }

    /// How many times it has started listening: 1 after the first
    /// connection, one more after each reconnect.
    ///
    /// # Examples
    ///
    /// See [`ChangeFeed`].
    pub fn sessions(&self) -> u64 {
        self.status.sessions.load(Ordering::Relaxed)
    }

    /// How many notifications were applied, and how many ignored as
    /// malformed.
    ///
    /// # Examples
    ///
    /// See [`ChangeFeed`].
    pub fn notifications(&self) -> (u64, u64) {
        (
            self.status.applied.load(Ordering::Relaxed),
            self.status.rejected.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
