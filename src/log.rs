//! The crate's log events. Their field names (`tenant`, `query`, `index`,
//! `outcome`, `elapsed_ms`, `error`) are part of the public contract.
//!
//! Each input is logged once, when it settles: DEBUG when it succeeded,
//! WARN when it failed or ran out of time, ERROR when it panicked.

use std::fmt::Display;
use std::time::Duration;

use crate::drive::Finished;
use crate::{BoxError, Settled, TenantId};

/// Milliseconds with microsecond precision (`12.345`), not float noise.
fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1e3
}

/// An input of a free function, [`FanOut::settle`](crate::FanOut::settle)
/// or [`FanOut::with_defaults`](crate::FanOut::with_defaults); `error`
/// displays an input's error when the caller's error type allows it.
///
/// The fields are computed inside the macros, so only when the event is
/// enabled: this runs once per input, on the hot path.
pub(crate) fn input_settled<T, E>(
    finished: &Finished<T, E>,
    error: impl FnOnce(&E) -> Option<&dyn Display>,
) {
    let (index, settled) = (finished.index, &finished.settled);
    let outcome = || settled.label();
    let elapsed_ms = || millis(finished.elapsed());
    match settled {
        Settled::Ok(_) => tracing::debug!(
            index,
            outcome = outcome(),
            elapsed_ms = elapsed_ms(),
            "input succeeded"
        ),
        Settled::Panicked(message) => {
            tracing::error!(index, outcome = outcome(), elapsed_ms = elapsed_ms(), error = %message, "input panicked")
        }
        Settled::Err(e) => match error(e) {
            Some(e) => {
                tracing::warn!(index, outcome = outcome(), elapsed_ms = elapsed_ms(), error = %e, "input failed")
            }
            None => tracing::warn!(
                index,
                outcome = outcome(),
                elapsed_ms = elapsed_ms(),
                "input failed"
            ),
        },
        _ => tracing::warn!(
            index,
            outcome = outcome(),
            elapsed_ms = elapsed_ms(),
            "input failed"
        ),
    }
}

/// A query of [`FanOut::run`](crate::FanOut::run).
pub(crate) fn query_settled<T>(
    tenant: &TenantId,
    query: &'static str,
    settled: &Settled<T, BoxError>,
    elapsed: Duration,
) {
    let tenant = tenant.as_str();
    let outcome = query_outcome(settled);
    let elapsed_ms = millis(elapsed);
    match settled {
        Settled::Ok(_) => tracing::debug!(tenant, query, outcome, elapsed_ms, "query succeeded"),
        Settled::Panicked(message) => {
            tracing::error!(tenant, query, outcome, elapsed_ms, error = %message, "query panicked; using its fallback")
        }
        Settled::Err(e) => {
            tracing::warn!(tenant, query, outcome, elapsed_ms, error = %e, "query failed; using its fallback")
        }
        _ => tracing::warn!(
            tenant,
            query,
            outcome,
            elapsed_ms,
            "query failed; using its fallback"
        ),
    }
}

/// The [`Source::label`](crate::Source::label) word a settled query's
/// outcome gets: `fresh` for a success, else how it failed.
pub(crate) fn query_outcome<T>(settled: &Settled<T, BoxError>) -> &'static str {
    match settled {
        Settled::Ok(_) => "fresh",
        other => other.label(),
    }
}
