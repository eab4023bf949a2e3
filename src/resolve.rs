//! The one place a query's end becomes its [`Outcome`]: its own value
//! (fresh or cached), else the stale value its lookup found, else its
//! fallback; logged and recorded once, here.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Duration;

use crate::running::panic_message;
use crate::{BoxError, DashboardQuery, Failure, Loaded, Outcome, Settled, Source, TenantId, log};

/// How one query ended, from the engine.
pub(crate) struct QueryEnd<T> {
    pub(crate) settled: Settled<Loaded<T>, BoxError>,
    pub(crate) stale: Option<(T, Duration)>,
    pub(crate) elapsed: Duration,
}

/// The outcome of a query named `name` that ended as `end`.
///
/// # Panics
///
/// When the query failed, has no stale value and its `fallback()` panics:
/// there is no value to show, so that panic is logged and resumed.
pub(crate) fn outcome<Q: DashboardQuery>(
    query: &Q,
    name: &'static str,
    tenant: &TenantId,
    end: QueryEnd<Q::Output>,
) -> Outcome<Q::Output> {
    let failure = match end.settled {
        Settled::Ok(Loaded::Fresh(value)) => {
            return observed(name, tenant, value, Source::Fresh, end.elapsed);
        }
        Settled::Ok(Loaded::Cached { value, age }) => {
            return observed(name, tenant, value, Source::Cached { age }, end.elapsed);
        }
        Settled::Err(error) => failure_of(error),
        Settled::TimedOut => Failure::TimedOut,
        Settled::DeadlineExceeded => Failure::DeadlineExceeded,
        Settled::Panicked(message) => Failure::Panicked(message),
        Settled::LimiterClosed => Failure::LimiterClosed,
    };
    if let Some((value, age)) = end.stale {
        let source = Source::Stale {
            age,
            cause: failure,
        };
        return observed(name, tenant, value, source, end.elapsed);
    }
    match catch_unwind(AssertUnwindSafe(|| query.fallback())) {
        Ok(value) => observed(name, tenant, value, Source::Fallback(failure), end.elapsed),
        Err(payload) => {
            log::fallback_panicked(tenant, name, &failure, &panic_message(&*payload));
            resume_unwind(payload)
        }
    }
}

/// A query's error as a [`Failure`]: a shared cache load that timed out or
/// panicked says so, as the query itself would have.
fn failure_of(error: BoxError) -> Failure {
    #[cfg(feature = "cache")]
    if let Some(failure) = shared_load_failure(&*error) {
        return failure;
    }
    Failure::Error(error)
}

#[cfg(feature = "cache")]
fn shared_load_failure(error: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    use crate::cache::LoadError;
    // A dynamic widget wraps its query's error.
    #[cfg(feature = "serde")]
    let error = match error.downcast_ref::<crate::dynamic::WidgetError>() {
        Some(widget) => widget.inner(),
        None => error,
    };
    match error.downcast_ref::<LoadError>()? {
        LoadError::TimedOut => Some(Failure::TimedOut),
        LoadError::Panicked(message) => Some(Failure::Panicked(message.clone())),
        LoadError::Query(_) => None,
    }
}

fn observed<T>(
    name: &'static str,
    tenant: &TenantId,
    value: T,
    source: Source,
    elapsed: Duration,
) -> Outcome<T> {
    log::query_finished(tenant, name, &source, elapsed);
    #[cfg(feature = "metrics")]
    crate::metrics::query_settled(name, source.label(), elapsed);
    Outcome::new(value, source, elapsed)
}

/// Records the whole fan-out's metrics.
pub(crate) fn fan_out_finished(_elapsed: Duration) {
    #[cfg(feature = "metrics")]
    crate::metrics::fan_out_finished(_elapsed);
}
