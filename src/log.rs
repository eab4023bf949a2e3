//! The crate's log events. Their field names (`tenant`, `query`, `index`,
//! `outcome`, `elapsed_ms`, `error`) are part of the public contract.
//!
//! Each input is logged once, when it settles: DEBUG when it succeeded,
//! WARN when it failed or ran out of time, ERROR when it panicked.

use std::fmt::Display;
use std::time::Duration;

use crate::drive::Ended;
use crate::{Failure, Settled, Source, TenantId};

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
pub(crate) fn input_settled<T, E, V>(
    finished: &Ended<T, E, V>,
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

/// A query of a dashboard, once its outcome is known: DEBUG when fresh,
/// cached or shed under load (a limiter's deliberate choice, counted in
/// metrics; a WARN for each would flood the logs exactly when the service
/// is busiest), WARN when stale or a fallback, ERROR when it panicked.
pub(crate) fn query_finished(
    tenant: &TenantId,
    query: &str,
    source: &Source,
    elapsed: Duration,
    waited: Duration,
) {
    let tenant = tenant.as_str();
    let outcome = source.label();
    // A closure, called inside the macros: only when the event is enabled.
    let elapsed_ms = || millis(elapsed);
    match source {
        Source::Fallback(Failure::Shed)
        | Source::Stale {
            cause: Failure::Shed,
            ..
        } => tracing::debug!(
            tenant,
            query,
            outcome,
            waited_ms = millis(waited),
            stale = matches!(source, Source::Stale { .. }),
            "query shed under load; not started"
        ),
        Source::Fresh => tracing::debug!(
            tenant,
            query,
            outcome,
            elapsed_ms = elapsed_ms(),
            "query succeeded"
        ),
        Source::Cached { age } | Source::Refreshing { age } => {
            tracing::debug!(
                tenant,
                query,
                outcome,
                elapsed_ms = elapsed_ms(),
                age_ms = millis(*age),
                "served from cache"
            )
        }
        Source::Stale { age, cause } => tracing::warn!(
            tenant,
            query,
            outcome,
            elapsed_ms = elapsed_ms(),
            age_ms = millis(*age),
            cause = cause.label(),
            error = %detail(cause),
            "query failed; serving its last good value"
        ),
        Source::Fallback(failure @ Failure::Panicked(_)) => tracing::error!(
            tenant,
            query,
            outcome,
            elapsed_ms = elapsed_ms(),
            error = %detail(failure),
            "query panicked; using its fallback"
        ),
        Source::Fallback(failure) => tracing::warn!(
            tenant,
            query,
            outcome,
            elapsed_ms = elapsed_ms(),
            error = %detail(failure),
            "query failed; using its fallback"
        ),
    }
}

/// What went wrong, without the failure's own prefix: the query's error
/// or panic message as it was, else the failure ("timed out").
fn detail(failure: &Failure) -> &dyn Display {
    match failure {
        Failure::Error(error) => error,
        Failure::Panicked(message) => message,
        other => other,
    }
}

/// A failed query whose `fallback()` panicked: no value exists to show.
pub(crate) fn fallback_panicked(tenant: &TenantId, query: &str, failure: &Failure, message: &str) {
    tracing::error!(
        tenant = tenant.as_str(),
        query,
        outcome = failure.label(),
        error = %message,
        "query failed and its fallback panicked; no value to show"
    );
}
