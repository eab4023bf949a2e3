//! [`Health`]: the shared tier's circuit breaker and its WARN rate limit.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::RedisTierError;

/// At most one WARN per tier in this long, however Redis flaps.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Whether Redis is failing, and when to try it again: a circuit breaker,
/// and the one-WARN-per-episode log.
#[derive(Default)]
pub(super) struct Health(Mutex<HealthState>);

#[derive(Default)]
pub(super) struct HealthState {
    failing: bool,
    /// While failing: when one call may try Redis again; `None` when the
    /// pause does not end (`retry_after(Duration::MAX)`).
    retry_at: Option<Instant>,
    pub(super) warned_at: Option<Instant>,
}

impl Health {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether to call Redis now: always while it works; while it fails,
    /// once per `retry_after` (the call that finds the pause over), and
    /// never again when `retry_after` is too long to add to now.
    pub(super) fn admits(&self, retry_after: Duration) -> bool {
        let mut state = self.state();
        if !state.failing {
            return true;
        }
        let now = Instant::now();
        match state.retry_at {
            Some(at) if now >= at => {
                state.retry_at = now.checked_add(retry_after);
                true
            }
            _ => false,
        }
    }

    pub(super) fn succeeded(&self, namespace: &str) {
        let mut state = self.state();
        if state.failing {
            state.failing = false;
            state.retry_at = None;
            drop(state);
            tracing::info!(namespace, "Redis shared cache reachable again");
        }
    }

    pub(super) fn failed(&self, namespace: &str, error: &RedisTierError, retry_after: Duration) {
        let mut state = self.state();
        let now = Instant::now();
        // `Duration::MAX` overflows an Instant: it means "never".
        state.retry_at = now.checked_add(retry_after);
        let warn = !state.failing
            && state
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
        state.failing = true;
        if warn {
            state.warned_at = Some(now);
        }
        drop(state);
        if warn {
            tracing::warn!(
                namespace,
                %error,
                "Redis shared cache unavailable; serving from the in-process cache and the database"
            );
        } else {
            tracing::debug!(namespace, %error, "Redis shared cache call failed");
        }
    }
}
