//! [`LoadError`] and [`Loads`]: one in-flight load per cache key, shared by
//! every caller that asks while it runs.
//!
//! A load is a [`Shared`] future: whichever waiter is polled drives it, so a
//! caller that is parked (a slow SSE client, a `select!` arm not taken)
//! never holds up the others. Its result (value, error, timeout or panic)
//! reaches every waiter; only a value is stored for later callers.
//!
//! A load runs under the deadline of the caller that started it (the query
//! is given that caller's context), plus a short grace. A waiter with time
//! left when the load times out ([`LoadError::TimedOut`]) starts a new one,
//! so an impatient first caller never cuts the others short. (A query that
//! enforces the starter's deadline itself, such as `fanout::postgres` with
//! its server-side timeout, may fail with its own error first; that error
//! is shared like any other.)
//!
//! When every waiter is dropped before the load ends, the load is dropped
//! too: the query is cancelled (and with `fanout::postgres`, its statement
//! with it), nothing is stored, and the next caller starts a new load.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use tokio::time::Instant;

use crate::running::panic_message;

/// Why a cached query gave no value. Every caller that waited on the same
/// load gets the same error.
///
/// A fan-out reports `TimedOut` and `Panicked` as the query's own
/// [`Failure::TimedOut`](crate::Failure::TimedOut) and
/// [`Failure::Panicked`](crate::Failure::Panicked), and `Query` as
/// [`Failure::Error`](crate::Failure::Error) with the query's message.
///
/// # Examples
///
/// ```
/// use fanout::cache::LoadError;
///
/// let error = LoadError::Query(std::sync::Arc::new(std::io::Error::other("connection reset")));
/// assert_eq!(error.to_string(), "connection reset");
/// assert_eq!(LoadError::TimedOut.to_string(), "shared load timed out");
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The query returned an error (shared: the query's error type need not
    /// be `Clone`).
    #[error(transparent)]
    Query(Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The load ran past the deadline of the caller that started it (and a
    /// 25 ms grace), while other callers waited on it.
    #[error("shared load timed out")]
    TimedOut,
    /// The load panicked; holds the panic message.
    #[error("shared load panicked: {0}")]
    Panicked(String),
}

/// What a load gives every waiter: the stored value, or why there is none.
pub(super) type LoadResult<V> = Result<Fetched<V>, LoadError>;

/// A load's value and whether this load computed it (rather than finding
/// it in a tier behind the first, or stored by a load just before).
#[derive(Clone)]
pub(super) struct Fetched<V> {
    pub(super) value: V,
    pub(super) computed: bool,
}

/// How long a load outlives the deadline of the caller that started it. That
/// caller's own fan-out stops waiting at its deadline and reports why
/// (timed out, deadline exceeded) as without a cache; the load only goes on
/// for the callers still waiting, which then load again with their own time.
const GRACE: std::time::Duration = std::time::Duration::from_millis(25);

type Load<V> = Shared<BoxFuture<'static, LoadResult<V>>>;

/// A load in the table: its id, its deadline, and a handle that does not
/// keep it alive (the waiters do).
struct InFlight<V> {
    id: u64,
    /// Until when the load may take joiners (and store its value): fixed
    /// when it starts, so that a longer record lifetime learnt later never
    /// stretches it past a sweep made meanwhile. `None`: for ever.
    fresh_until: Option<Instant>,
    deadline: Option<Instant>,
    load: WeakShared<BoxFuture<'static, LoadResult<V>>>,
}

/// A caller's place on a load.
pub(super) struct Joined<V> {
    pub(super) load: Load<V>,
    /// Whether this caller started the load.
    pub(super) started_here: bool,
    /// When the load gives up: the deadline of the caller that started it.
    pub(super) deadline: Option<Instant>,
}

/// The loads in flight, by key.
pub(super) struct Loads<K, V> {
    in_flight: Mutex<HashMap<K, InFlight<V>>>,
    next_id: AtomicU64,
}

impl<K, V> Default for Loads<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K, V> Loads<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The load in flight for `key`, or a new one made by `start`; says
    /// whether this caller started it. The load is bounded by `deadline`
    /// (the starting caller's), catches its own panics and leaves the
    /// table when it ends or is dropped.
    ///
    /// A load older than `max_age` (as it was when the load started) takes
    /// no joiners: a new one is started, and the old one goes on for its
    /// own waiters. `start` is given the same limit, past which the load
    /// must not store its value.
    pub(super) fn join_or_start<F>(
        self: &Arc<Self>,
        key: &K,
        deadline: Option<Instant>,
        max_age: std::time::Duration,
        start: impl FnOnce(Option<Instant>) -> F,
    ) -> Joined<V>
    where
        F: Future<Output = Result<Fetched<V>, LoadError>> + Send + 'static,
    {
        let mut in_flight = self.lock();
        let now = Instant::now();
        if let Some(joined) = in_flight.get(key).and_then(|known| {
            if known.fresh_until.is_some_and(|until| now >= until) {
                return None;
            }
            Some(Joined {
                load: known.load.upgrade()?,
                started_here: false,
                deadline: known.deadline,
            })
        }) {
            return joined;
        }
        // Built before `Registered`, whose `Drop` takes the lock: a panic
        // here only poisons the lock, which every user of it ignores.
        let fresh_until = now.checked_add(max_age);
        let work = start(fresh_until);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let registered = Registered {
            loads: Arc::clone(self),
            key: key.clone(),
            id,
        };
        let load = async move {
            // Dropped when the load ends or is cancelled: either way it
            // leaves the table, after its value (if any) was stored.
            let _registered = registered;
            let bounded = async move {
                match deadline.and_then(|at| at.checked_add(GRACE)) {
                    Some(at) => tokio::time::timeout_at(at, work)
                        .await
                        .unwrap_or(Err(LoadError::TimedOut)),
                    None => work.await,
                }
            };
            AssertUnwindSafe(bounded)
                .catch_unwind()
                .await
                .unwrap_or_else(|payload| Err(LoadError::Panicked(panic_message(&*payload))))
        }
        .boxed()
        .shared();
        let weak = load
            .downgrade()
            .expect("a load not yet polled has not ended");
        let known = InFlight {
            id,
            fresh_until,
            deadline,
            load: weak,
        };
        in_flight.insert(key.clone(), known);
        Joined {
            load,
            started_here: true,
            deadline,
        }
    }

    /// How many loads are in flight (for tests and bounds).
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, InFlight<V>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A load's place in the table, given up when the load is dropped.
struct Registered<K: Eq + Hash, V> {
    loads: Arc<Loads<K, V>>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V> Drop for Registered<K, V> {
    fn drop(&mut self) {
        let mut in_flight = self
            .loads
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A newer load for the key may have replaced this one.
        if in_flight
            .get(&self.key)
            .is_some_and(|known| known.id == self.id)
        {
            in_flight.remove(&self.key);
        }
    }
}
