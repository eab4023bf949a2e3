//! [`Generations`]: each tenant's generation as last read from Redis,
//! remembered for a bounded time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::TenantId;

/// A generation is remembered for this many generation checks ...
const KEEP_CHECKS: u32 = 60;
/// ... but at least this long (a zero check still keeps them a little) ...
const KEEP_AT_LEAST: Duration = Duration::from_secs(1);
/// ... and at most this long (a check of `Duration::MAX` would keep every
/// tenant ever seen).
const KEEP_AT_MOST: Duration = Duration::from_secs(10 * 60);

/// How long a tenant's generation is remembered after it was read, for a
/// tier that re-reads it every `generation_check`.
pub(super) fn keep_for(generation_check: Duration) -> Duration {
    generation_check
        .saturating_mul(KEEP_CHECKS)
        .clamp(KEEP_AT_LEAST, KEEP_AT_MOST)
}

/// A tenant's generation as the in-process tier keys its values: values of
/// one generation are never found under another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Generation {
    /// Read from Redis, or set by an invalidation on this instance.
    Known(u64),
    /// Redis is unavailable and the tenant's generation is not remembered.
    /// The number changes each time Redis answers again, so values computed
    /// in one such period are not served in the next: an invalidation may
    /// have been read in between.
    Unknown(u64),
}

impl Generation {
    /// The generation for Redis keys; `None` when unknown (skip Redis).
    pub(super) fn known(self) -> Option<u64> {
        match self {
            Self::Known(generation) => Some(generation),
            Self::Unknown(_) => None,
        }
    }

    /// `key` (a [`SharedCached::key`](super::SharedCached::key)) as the
    /// in-process tier's key: prefixed with the generation.
    pub(super) fn local_key(self, key: &str) -> Arc<str> {
        match self {
            Self::Known(generation) => format!("{generation}:{key}").into(),
            Self::Unknown(period) => format!("?{period}:{key}").into(),
        }
    }
}

/// Each tenant's generation as last read from Redis, and when.
///
/// Bounded by time: a record older than [`keep_for`] is dropped at the next
/// sweep, and a sweep runs (O(records)) when a tenant is added and one
/// `keep_for` has passed since the last, so the map holds at most the
/// tenants read within the last two `keep_for`s.
pub(super) struct Generations {
    keep_for: Duration,
    state: Mutex<State>,
}

struct State {
    seen: HashMap<TenantId, Seen>,
    last_sweep: Instant,
    /// The number of the current period without a known generation.
    unknown_period: u64,
    /// Whether that number was handed out: the next answer from Redis ends
    /// the period.
    unknown_used: bool,
}

/// A tenant's generation in Redis, and when it was read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) generation: u64,
    pub(super) at: Instant,
}

impl Generations {
    pub(super) fn new(generation_check: Duration) -> Self {
        Self {
            keep_for: keep_for(generation_check),
            state: Mutex::new(State {
                seen: HashMap::new(),
                last_sweep: Instant::now(),
                unknown_period: 0,
                unknown_used: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tenant's remembered generation, if any.
    pub(super) fn get(&self, tenant: &TenantId) -> Option<Seen> {
        self.state().seen.get(tenant).copied()
    }

    /// How many tenants' generations are remembered.
    pub(super) fn len(&self) -> usize {
        self.state().seen.len()
    }

    /// The generation of a tenant whose generation Redis cannot tell and
    /// that is not remembered.
    pub(super) fn unknown(&self) -> Generation {
        let mut state = self.state();
        state.unknown_used = true;
        Generation::Unknown(state.unknown_period)
    }

    /// Records `generation`, read from Redis by a call made at `asked`;
    /// returns the generation to use, and whether it differs from the one
    /// remembered. A record newer than `asked` (an invalidation made here
    /// meanwhile) wins.
    pub(super) fn read(
        &self,
        tenant: &TenantId,
        generation: u64,
        asked: Instant,
    ) -> (Generation, bool) {
        let mut state = self.state();
        if state.unknown_used {
            state.unknown_used = false;
            state.unknown_period += 1;
        }
        let now = Instant::now();
        match state.seen.get_mut(tenant) {
            Some(latest) if latest.at > asked => (Generation::Known(latest.generation), false),
            Some(latest) => {
                let changed = latest.generation != generation;
                *latest = Seen {
                    generation,
                    at: now,
                };
                (Generation::Known(generation), changed)
            }
            None => {
                state.insert(tenant, generation, now, self.keep_for);
                (Generation::Known(generation), false)
            }
        }
    }

    /// Records `generation`, just set in Redis by this instance.
    pub(super) fn set(&self, tenant: &TenantId, generation: u64) {
        let now = Instant::now();
        let mut state = self.state();
        match state.seen.get_mut(tenant) {
            Some(latest) => {
                *latest = Seen {
                    generation,
                    at: now,
                }
            }
            None => state.insert(tenant, generation, now, self.keep_for),
        }
    }
}

impl State {
    fn insert(&mut self, tenant: &TenantId, generation: u64, now: Instant, keep_for: Duration) {
        // Amortised: one pass per `keep_for` at most, over records that
        // were all added within the last two.
        if now.duration_since(self.last_sweep) >= keep_for {
            self.seen
                .retain(|_, seen| now.duration_since(seen.at) < keep_for);
            self.last_sweep = now;
        }
        self.seen.insert(
            tenant.clone(),
            Seen {
                generation,
                at: now,
            },
        );
    }
}
