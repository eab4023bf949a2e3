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
    pub(crate) waited: Duration,
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
    let observed = |value, source| observed(name, tenant, value, source, end.elapsed, end.waited);
    let failure = match end.settled {
        Settled::Ok(Loaded::Fresh(value)) => return observed(value, Source::Fresh),
        Settled::Ok(Loaded::Cached { value, age }) => {
            return observed(value, Source::Cached { age });
        }
        Settled::Ok(Loaded::Refreshing { value, age }) => {
            return observed(value, Source::Refreshing { age });
        }
        Settled::Err(error) => failure_of(error),
        Settled::TimedOut => Failure::TimedOut,
        Settled::DeadlineExceeded => Failure::DeadlineExceeded,
        Settled::Panicked(message) => Failure::Panicked(message),
        Settled::LimiterClosed => Failure::LimiterClosed,
        Settled::Shed => Failure::Shed,
    };
    if let Some((value, age)) = end.stale {
        let source = Source::Stale {
            age,
            cause: failure,
        };
        return observed(value, source);
    }
    match catch_unwind(AssertUnwindSafe(|| query.fallback())) {
        Ok(value) => observed(value, Source::Fallback(failure)),
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
    waited: Duration,
) -> Outcome<T> {
    log::query_finished(tenant, name, &source, elapsed, waited);
    #[cfg(feature = "metrics")]
    crate::metrics::query_settled(name, source.label(), elapsed);
    Outcome::new(value, source, elapsed, waited)
}

/// Records the whole fan-out's metrics: how long it took, its longest wait
/// for a limiter's permit, and the fair limiter's queue length when it
/// joined its line, if it has one.
pub(crate) fn fan_out_finished(
    _elapsed: Duration,
    _longest_wait: Duration,
    _queue_length: Option<usize>,
) {
    #[cfg(feature = "metrics")]
    crate::metrics::fan_out_finished(_elapsed, _longest_wait, _queue_length);
}
