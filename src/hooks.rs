//! [`Hooks`]: what the fan-out asks of a query before running it (its name
//! and timeout), asked once with panics contained, and the two futures it
//! runs for it: the load and, after a failure, the stale lookup.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::running::panic_message;
use crate::{BoxError, DashboardQuery, Loaded, QueryContext, TenantId};

/// The name logged for a query whose `name()` panicked.
const UNNAMED: &str = "(name panicked)";

/// A query's [`name`](DashboardQuery::name) and
/// [`timeout`](DashboardQuery::timeout), read once. A hook that panics
/// makes the query fail as `Panicked` when it starts, without touching its
/// siblings.
#[derive(Clone, Debug)]
pub(crate) struct Hooks {
    pub(crate) name: &'static str,
    pub(crate) timeout: Option<Duration>,
    panicked: Option<Arc<str>>,
}

impl Hooks {
    pub(crate) fn of<Q: DashboardQuery>(query: &Q) -> Self {
        let name = catch_unwind(AssertUnwindSafe(|| query.name()));
        let timeout = catch_unwind(AssertUnwindSafe(|| query.timeout()));
        match (name, timeout) {
            (Ok(name), Ok(timeout)) => Self {
                name,
                timeout,
                panicked: None,
            },
            (name, timeout) => {
                let message = [name.err(), timeout.err()]
                    .into_iter()
                    .flatten()
                    .map(|payload| panic_message(&*payload))
                    .collect::<Vec<_>>()
                    .join("; ");
                Self {
                    name: name_or_unnamed(query),
                    timeout: None,
                    panicked: Some(message.into()),
                }
            }
        }
    }
}

fn name_or_unnamed<Q: DashboardQuery>(query: &Q) -> &'static str {
    // Asked again only on this rare path, to log a query whose timeout
    // panicked under its own name.
    catch_unwind(AssertUnwindSafe(|| query.name())).unwrap_or(UNNAMED)
}

/// Runs `query.load` in a `query` span, boxing its error. Builds nothing
/// until first polled, so a panic in the query's own code, or a hook that
/// panicked earlier, surfaces where the engine catches it.
pub(crate) fn load<'q, Q: DashboardQuery>(
    query: &'q Q,
    hooks: &Hooks,
    ctx: QueryContext,
) -> impl Future<Output = Result<Loaded<Q::Output>, BoxError>> + Send + use<'q, Q> {
    let (name, panicked) = (hooks.name, hooks.panicked.clone());
    async move {
        if let Some(message) = panicked {
            // `resume_unwind` skips the panic hook: the hook already ran.
            resume_unwind(Box::new(message.to_string()));
        }
        let span = tracing::info_span!("query", tenant = %ctx.tenant(), query = name);
        query
            .load(ctx)
            .instrument(span)
            .await
            .map_err(|e| Box::new(e) as BoxError)
    }
}

/// The query's stale value for `tenant`, looked up when first polled.
pub(crate) async fn lookup<Q, T>(query: &Q, tenant: T) -> Option<(Q::Output, Duration)>
where
    Q: DashboardQuery,
    T: std::borrow::Borrow<TenantId>,
{
    query.stale(tenant.borrow()).await
}
