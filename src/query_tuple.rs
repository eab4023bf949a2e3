//! A tuple's queries through the engine, each held in place: a typed
//! [`Slot`] per query, pinned in the fan-out's own future, seen by the
//! engine through the object-safe [`Member`] and driven by [`Members`].
//! No box and no task per query (a failed query's stale lookup is boxed,
//! on that path only). A tuple has at most 12 queries, so the running ones
//! are polled together on each wake-up, as `tokio::join!` does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::drive::{Drive, Ended, Inputs, Recover, Stamp, Stop, earliest, expiry};
use crate::hooks::{self, Hooks};
use crate::limiter::Permit;
use crate::queue::poll_once;
use crate::resolve::{self, QueryEnd};
use crate::running::Running;
use crate::{BoxError, DashboardQuery, FanOut, Loaded, Outcome, QueryContext, TenantId};

/// The most queries a tuple has: [`Members`] keeps them in bit sets.
pub(crate) const MAX_MEMBERS: usize = 12;

type EndedOf<Q> = Ended<
    Loaded<<Q as DashboardQuery>::Output>,
    BoxError,
    (<Q as DashboardQuery>::Output, Duration),
>;

pin_project! {
    /// One query of a tuple: not started, running, or ended with its
    /// result kept here until the tuple's outcomes are built. `L` is
    /// [`hooks::load`] for `Q`: a function item, so that the load future's
    /// type, which cannot be written, is still known.
    pub(crate) struct Slot<'a, Q: DashboardQuery, L, F> {
        query: &'a Q,
        tenant: &'a TenantId,
        hooks: Hooks,
        load: L,
        #[pin]
        running: Option<Running<F, Loaded<Q::Output>, BoxError, Lookup<'a, Q>>>,
        ended: Option<EndedOf<Q>>,
    }
}

impl<'a, Q, L, F> Slot<'a, Q, L, F>
where
    Q: DashboardQuery,
    L: FnOnce(&'a Q, &Hooks, QueryContext) -> F + Copy,
    F: Future<Output = Result<Loaded<Q::Output>, BoxError>>,
{
    pub(crate) fn new(query: &'a Q, tenant: &'a TenantId, load: L) -> Self {
        Self {
            query,
            tenant,
            hooks: Hooks::of(query),
            load,
            running: None,
            ended: None,
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.hooks.name
    }

    /// The query's outcome, once the engine has ended it; `waited` as the
    /// engine stamped it.
    pub(crate) fn outcome(self: Pin<&mut Self>, waited: Duration) -> Outcome<Q::Output> {
        let this = self.project();
        let ended = this
            .ended
            .take()
            .expect("fanout bug: a tuple query has no result");
        let end = QueryEnd {
            elapsed: ended.elapsed(),
            waited,
            settled: ended.settled,
            stale: ended.stale,
        };
        resolve::outcome(*this.query, this.hooks.name, this.tenant, end)
    }
}

/// A tuple query's stale lookup, not yet built.
pub(crate) struct Lookup<'a, Q> {
    query: &'a Q,
    tenant: &'a TenantId,
}

impl<'a, Q: DashboardQuery> Recover for Lookup<'a, Q> {
    type Value = (Q::Output, Duration);
    type Future = BoxFuture<'a, Option<(Q::Output, Duration)>>;

    fn recover(self) -> Option<Self::Future> {
        // Boxed: it only exists after a failure, and its type cannot be
        // written.
        Some(Box::pin(hooks::lookup(self.query, self.tenant)))
    }
}

/// A [`Slot`] with its query's type erased, as [`Members`] drives it.
pub(crate) trait Member: Send {
    /// Starts the query at `now`, as [`Inputs::start_next`].
    fn start(
        self: Pin<&mut Self>,
        index: usize,
        now: Instant,
        per_item: Option<Duration>,
        deadline_at: Option<Instant>,
        permit: Option<Permit>,
    );

    /// Gives the query up without starting it, as [`Inputs::skip_next`].
    fn skip(self: Pin<&mut Self>, index: usize, stop: Stop, at: Instant, cx: &mut Context<'_>);

    /// Polls the running query: ready once it has ended.
    fn poll_running(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;

    /// Stops the running query now, as `stop`.
    fn expire(self: Pin<&mut Self>, stop: Stop, now: Instant, cx: &mut Context<'_>);

    /// When the ended query started.
    fn started_at(&self) -> Option<Instant>;
}

impl<'a, Q, L, F> Member for Slot<'a, Q, L, F>
where
    Q: DashboardQuery,
    L: FnOnce(&'a Q, &Hooks, QueryContext) -> F + Copy + Send,
    F: Future<Output = Result<Loaded<Q::Output>, BoxError>> + Send,
{
    fn start(
        self: Pin<&mut Self>,
        index: usize,
        now: Instant,
        per_item: Option<Duration>,
        deadline_at: Option<Instant>,
        permit: Option<Permit>,
    ) {
        let mut this = self.project();
        let (expiry, own_timer) = expiry(now, this.hooks.timeout, per_item, deadline_at);
        let ctx = QueryContext::new(this.tenant.clone(), earliest(expiry, deadline_at));
        // Builds the future only: the query's code runs when it is polled.
        let load = (*this.load)(*this.query, this.hooks, ctx);
        let lookup = Lookup {
            query: *this.query,
            tenant: this.tenant,
        };
        let name = this.hooks.name;
        this.running.set(Some(Running::new(
            load, lookup, index, name, now, own_timer, permit,
        )));
    }

    fn skip(self: Pin<&mut Self>, index: usize, stop: Stop, at: Instant, cx: &mut Context<'_>) {
        let this = self.project();
        let lookup = Lookup {
            query: *this.query,
            tenant: this.tenant,
        };
        *this.ended = Some(Ended {
            index,
            name: this.hooks.name,
            settled: stop.settled(),
            stale: lookup.recover().and_then(|lookup| poll_once(lookup, cx)),
            started_at: at,
            ended_at: at,
            waited: Duration::ZERO,
        });
    }

    fn poll_running(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let Some(running) = this.running.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        let ended = ready!(running.poll(cx));
        // The input and its lookup are dropped already: an empty shell.
        this.running.set(None);
        *this.ended = Some(ended);
        Poll::Ready(())
    }

    fn expire(self: Pin<&mut Self>, stop: Stop, now: Instant, cx: &mut Context<'_>) {
        let mut this = self.project();
        if let Some(running) = this.running.as_mut().as_pin_mut() {
            let ended = running.expire(stop.settled(), now, cx);
            this.running.set(None);
            *this.ended = Some(ended);
        }
    }

    fn started_at(&self) -> Option<Instant> {
        self.ended.as_ref().map(|ended| ended.started_at)
    }
}

/// What the engine yields for a tuple query: its result stays in its slot.
pub(crate) struct Done {
    pub(crate) index: usize,
    started_at: Instant,
    pub(crate) waited: Duration,
}

impl Stamp for Done {
    fn started_at(&self) -> Instant {
        self.started_at
    }

    fn set_waited(&mut self, waited: Duration) {
        self.waited = waited;
    }
}

/// A tuple's members as the engine's [`Inputs`], started in order.
pub(crate) struct Members<'m, 'p> {
    members: &'m mut [Pin<&'p mut (dyn Member + 'p)>],
    /// The next member to start.
    next: usize,
    /// Bit `i` set: member `i` is running.
    running: u32,
    /// Bit `i` set: member `i` has ended and the engine has not yielded it.
    ended: u32,
}

impl<'m, 'p> Members<'m, 'p> {
    fn new(members: &'m mut [Pin<&'p mut (dyn Member + 'p)>]) -> Self {
        assert!(
            members.len() <= MAX_MEMBERS,
            "fanout bug: a tuple of more than {MAX_MEMBERS} queries"
        );
        Self {
            members,
            next: 0,
            running: 0,
            ended: 0,
        }
    }

    fn done(&self, index: usize, at: Option<Instant>) -> Done {
        let started_at = at
            .or_else(|| self.members[index].started_at())
            .expect("fanout bug: a tuple query ended without a start");
        Done {
            index,
            started_at,
            waited: Duration::ZERO,
        }
    }
}

/// The lowest index in `set`, taken out of it.
fn take_lowest(set: &mut u32) -> Option<usize> {
    if *set == 0 {
        return None;
    }
    let index = set.trailing_zeros() as usize;
    *set &= *set - 1;
    Some(index)
}

impl Inputs for Members<'_, '_> {
    type Ended = Done;

    fn has_pending(&mut self) -> bool {
        self.next < self.members.len()
    }

    fn pending_hint(&self) -> (usize, Option<usize>) {
        let left = self.members.len() - self.next;
        (left, Some(left))
    }

    fn running(&self) -> usize {
        self.running.count_ones() as usize
    }

    fn taken(&self) -> usize {
        self.next
    }

    fn start_next(
        &mut self,
        now: Instant,
        per_item: Option<Duration>,
        deadline_at: Option<Instant>,
        permit: Option<Permit>,
    ) -> bool {
        let index = self.next;
        let Some(member) = self.members.get_mut(index) else {
            return false;
        };
        member
            .as_mut()
            .start(index, now, per_item, deadline_at, permit);
        self.next += 1;
        self.running |= 1 << index;
        true
    }

    fn skip_next(&mut self, stop: Stop, at: Instant, cx: &mut Context<'_>) -> Option<Done> {
        let index = self.next;
        let member = self.members.get_mut(index)?;
        member.as_mut().skip(index, stop, at, cx);
        self.next += 1;
        Some(self.done(index, Some(at)))
    }

    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done>> {
        if self.ended == 0 {
            if self.running == 0 {
                return Poll::Ready(None);
            }
            let mut running = self.running;
            while let Some(index) = take_lowest(&mut running) {
                if self.members[index].as_mut().poll_running(cx).is_ready() {
                    self.running &= !(1 << index);
                    self.ended |= 1 << index;
                }
            }
        }
        match take_lowest(&mut self.ended) {
            Some(index) => Poll::Ready(Some(self.done(index, None))),
            None => Poll::Pending,
        }
    }

    fn expire_running(&mut self, stop: Stop, now: Instant, cx: &mut Context<'_>) -> Vec<Done> {
        let mut expired = Vec::new();
        let mut running = std::mem::take(&mut self.running) | std::mem::take(&mut self.ended);
        while let Some(index) = take_lowest(&mut running) {
            self.members[index].as_mut().expire(stop, now, cx);
            expired.push(self.done(index, None));
        }
        expired
    }
}

/// Runs a tuple's members as one fan-out; returns how long each waited to
/// start (in input order) and the fair limiter's queue length when the
/// fan-out joined its line.
pub(crate) async fn run<'p>(
    fan_out: &FanOut,
    tenant: &TenantId,
    members: &mut [Pin<&'p mut (dyn Member + 'p)>],
) -> ([Duration; MAX_MEMBERS], Option<usize>) {
    let mut waited = [Duration::ZERO; MAX_MEMBERS];
    let mut drive = Drive::with_inputs(fan_out, Some(tenant), Members::new(members), false);
    while let Some(done) = drive.next().await {
        waited[done.index] = done.waited;
    }
    (waited, drive.queue_length())
}
