//! A tuple's queries through the engine. They differ in type, so each is
//! seen through one object-safe trait, [`Member`], and its value lands in a
//! typed slot of its own: one box per query, for its load future (and one
//! more for a failed query's stale lookup).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::drive::{Drive, Ended, Job, Recover};
use crate::hooks::{self, Hooks};
use crate::in_order::InOrder;
use crate::resolve::{self, QueryEnd};
use crate::{BoxError, DashboardQuery, FanOut, Loaded, Outcome, QueryContext, Settled, TenantId};

/// One query of a tuple, with the slot its value goes to.
pub(crate) struct Slot<'q, Q: DashboardQuery> {
    query: &'q Q,
    hooks: Hooks,
    found: Mutex<Option<Found<Q::Output>>>,
}

/// What a tuple query's slot receives: its own value, or after a failure
/// the stale value its lookup found.
enum Found<T> {
    Loaded(Loaded<T>),
    Stale(T, Duration),
}

impl<'q, Q: DashboardQuery> Slot<'q, Q> {
    pub(crate) fn new(query: &'q Q) -> Self {
        Self {
            query,
            hooks: Hooks::of(query),
            found: Mutex::new(None),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.hooks.name
    }

    /// The query's outcome, once the engine has ended it.
    pub(crate) fn outcome(
        self,
        tenant: &TenantId,
        ended: Ended<(), BoxError, ()>,
    ) -> Outcome<Q::Output> {
        let found = self
            .found
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let elapsed = ended.elapsed();
        let (settled, stale) = match (ended.settled, found) {
            (Settled::Ok(()), Some(Found::Loaded(loaded))) => (Settled::Ok(loaded), None),
            (Settled::Ok(()), _) => panic!("fanout bug: a tuple query ended Ok without a value"),
            // The engine's word decides: a lookup whose `Drop` panicked
            // filled the slot but counts as "no stale value".
            (failed, Some(Found::Stale(value, age))) if ended.stale.is_some() => {
                (failed_as(failed), Some((value, age)))
            }
            (failed, _) => (failed_as(failed), None),
        };
        let end = QueryEnd {
            settled,
            stale,
            elapsed,
            waited: ended.waited,
        };
        resolve::outcome(self.query, self.hooks.name, tenant, end)
    }
}

/// A failed settlement, retyped: it holds no value.
fn failed_as<T, U, E>(settled: Settled<T, E>) -> Settled<U, E> {
    match settled {
        Settled::Ok(_) => panic!("fanout bug: a successful query taken for a failed one"),
        Settled::Err(error) => Settled::Err(error),
        Settled::TimedOut => Settled::TimedOut,
        Settled::DeadlineExceeded => Settled::DeadlineExceeded,
        Settled::Panicked(message) => Settled::Panicked(message),
        Settled::LimiterClosed => Settled::LimiterClosed,
        Settled::Shed => Settled::Shed,
    }
}

/// A [`Slot`] with its query's type erased.
pub(crate) trait Member: Sync {
    fn hooks(&self) -> &Hooks;
    fn load(&self, ctx: QueryContext) -> BoxFuture<'_, Result<(), BoxError>>;
    fn lookup<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Option<()>>;
}

impl<Q: DashboardQuery> Member for Slot<'_, Q> {
    fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    fn load(&self, ctx: QueryContext) -> BoxFuture<'_, Result<(), BoxError>> {
        let load = hooks::load(self.query, &self.hooks, ctx);
        Box::pin(async move {
            let loaded = load.await?;
            *self.found.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Found::Loaded(loaded));
            Ok(())
        })
    }

    fn lookup<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Option<()>> {
        let lookup = hooks::lookup(self.query, tenant);
        Box::pin(async move {
            let (value, age) = lookup.await?;
            *self.found.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Found::Stale(value, age));
            Some(())
        })
    }
}

/// A tuple query as the engine's input.
struct TupleJob<'a> {
    member: &'a dyn Member,
    tenant: &'a TenantId,
}

/// A tuple query's stale lookup, not yet built.
struct TupleLookup<'a> {
    member: &'a dyn Member,
    tenant: &'a TenantId,
}

impl<'a> Recover for TupleLookup<'a> {
    type Value = ();
    type Future = BoxFuture<'a, Option<()>>;

    fn recover(self) -> Option<Self::Future> {
        Some(self.member.lookup(self.tenant))
    }
}

impl<'a> Job for TupleJob<'a> {
    type Ok = ();
    type Err = BoxError;
    type Future = BoxFuture<'a, Result<(), BoxError>>;
    type Recover = TupleLookup<'a>;

    const UNIFORM_TIMEOUT: bool = false;

    fn timeout(&self) -> Option<Duration> {
        self.member.hooks().timeout
    }

    fn name(&self) -> &'static str {
        self.member.hooks().name
    }

    fn start(self, deadline: Option<Instant>) -> (Self::Future, Self::Recover) {
        let ctx = QueryContext::new(self.tenant.clone(), deadline);
        (self.member.load(ctx), self.skip())
    }

    fn skip(self) -> Self::Recover {
        TupleLookup {
            member: self.member,
            tenant: self.tenant,
        }
    }
}

/// The members as the engine's inputs. A named iterator, not `map` with a
/// closure: the compiler cannot prove a future holding such a closure
/// `Send` for every lifetime (rust#102211).
struct TupleJobs<'a> {
    members: std::slice::Iter<'a, &'a dyn Member>,
    tenant: &'a TenantId,
}

impl<'a> Iterator for TupleJobs<'a> {
    type Item = TupleJob<'a>;

    fn next(&mut self) -> Option<TupleJob<'a>> {
        let member = *self.members.next()?;
        Some(TupleJob {
            member,
            tenant: self.tenant,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.members.size_hint()
    }
}

/// Runs a tuple's members as one fan-out; returns how each ended, in input
/// order, and the fair limiter's queue length when it joined its line.
pub(crate) async fn run(
    fan_out: &FanOut,
    tenant: &TenantId,
    members: &[&dyn Member],
) -> (Vec<Ended<(), BoxError, ()>>, Option<usize>) {
    let jobs = TupleJobs {
        members: members.iter(),
        tenant,
    };
    let mut ended = InOrder::new(members.len());
    let mut drive = Drive::new(fan_out, Some(tenant), jobs);
    while let Some(one) = drive.next().await {
        ended.place(one.index, one);
    }
    (ended.finish(drive.seen()), drive.queue_length())
}
