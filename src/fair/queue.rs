//! The fair limiter's queue: who holds permits, who waits for them, and
//! which waiter the next free permit goes to.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::TenantId;

/// A tenant's key in the queue: `None` for fan-outs that have no tenant
/// (`settle`, `stream`), which share one place in line.
pub(crate) type Key = Option<TenantId>;

/// The limiter's whole state, behind one mutex.
pub(crate) struct Queue {
    pub(crate) permits: usize,
    pub(crate) available: usize,
    pub(crate) cap: Option<NonZeroUsize>,
    /// `(target, interval)` of the standing-queue rule, when set.
    pub(crate) standing: Option<(Duration, Duration)>,
    pub(crate) closed: bool,
    tenants: HashMap<Key, Tenant>,
    /// Permits wanted by waiters and not granted yet: the queue's length.
    unmet: usize,
    /// The last instant `unmet` was zero.
    last_empty: Instant,
    /// Grants made and waits begun so far: the round-robin clock.
    turns: u64,
    /// Waiters created so far: their ids.
    created: u64,
    /// How long a permit is held, on average (an exponentially weighted
    /// mean of recent holds, in nanoseconds): what a query needs to finish.
    mean_hold: u64,
    /// Every grant, with the waiting tenants' shares just before it.
    #[cfg(test)]
    grants_log: Vec<tests::Grant>,
}

/// One tenant holding or waiting for permits. Removed once it does neither.
struct Tenant {
    held: usize,
    weight: u64,
    unmet: usize,
    /// When it was last granted a permit or began to wait (`turns` then):
    /// the round-robin order among tenants holding as many.
    last_served: u64,
    /// In arrival order: within a tenant, first come, first served.
    waiters: VecDeque<Waiter>,
}

/// One fan-out waiting for permits.
struct Waiter {
    id: u64,
    /// Permits it wants now, granted ones included.
    wanted: usize,
    /// Permits granted to it and not taken yet.
    granted: usize,
    waker: Option<Waker>,
}

impl Waiter {
    fn unmet(&self) -> usize {
        self.wanted.saturating_sub(self.granted)
    }
}

impl Queue {
    pub(crate) fn new(permits: usize) -> Self {
        Self {
            permits,
            available: permits,
            cap: None,
            standing: None,
            closed: false,
            tenants: HashMap::new(),
            unmet: 0,
            last_empty: Instant::now(),
            turns: 0,
            created: 0,
            mean_hold: 0,
            #[cfg(test)]
            grants_log: Vec::new(),
        }
    }

    /// Permits wanted by waiters and not granted yet.
    pub(crate) fn queued(&self) -> usize {
        self.unmet
    }

    /// Tenants holding or waiting for permits.
    pub(crate) fn tenants(&self) -> usize {
        self.tenants.len()
    }

    pub(crate) fn mean_hold(&self) -> Duration {
        Duration::from_nanos(self.mean_hold)
    }

    /// Whether permits have been wanted, without a moment's pause, for
    /// longer than `interval`: a standing queue.
    pub(crate) fn is_standing(&self, now: Instant, interval: Duration) -> bool {
        self.unmet > 0 && now.saturating_duration_since(self.last_empty) > interval
    }

    /// Puts a new waiter of `key` at the back of its tenant's line; returns
    /// its id. `weight` is used when the tenant is new.
    pub(crate) fn join(&mut self, key: &Key, weight: u64) -> u64 {
        self.created += 1;
        let id = self.created;
        let tenant = self.tenants.entry(key.clone()).or_insert_with(|| Tenant {
            held: 0,
            weight,
            unmet: 0,
            last_served: 0,
            waiters: VecDeque::new(),
        });
        tenant.waiters.push_back(Waiter {
            id,
            wanted: 0,
            granted: 0,
            waker: None,
        });
        id
    }

    /// Waiter `id` wants `wanted` permits in all (granted ones included);
    /// it is woken by `waker` when one is granted. Grants what it can.
    pub(crate) fn want(
        &mut self,
        key: &Key,
        id: u64,
        wanted: usize,
        waker: &Waker,
        now: Instant,
        wake: &mut Vec<Waker>,
    ) {
        // No fan-out can use more permits than there are (or than its
        // tenant may hold): an endless iterator asks for `usize::MAX`.
        let cap = self.cap.map_or(usize::MAX, NonZeroUsize::get);
        let wanted = wanted.min(self.permits.max(1)).min(cap);
        let Some(tenant) = self.tenants.get_mut(key) else {
            return;
        };
        let Some(waiter) = tenant.waiters.iter_mut().find(|w| w.id == id) else {
            return;
        };
        // Cloned before anything changes: a waker's `clone` is user code.
        if !waiter.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            waiter.waker = Some(waker.clone());
        }
        let before = waiter.unmet();
        // Granted permits it no longer wants go back.
        let excess = waiter.granted.saturating_sub(wanted);
        waiter.granted -= excess;
        waiter.wanted = wanted;
        let after = waiter.unmet();
        if tenant.unmet == 0 && after > 0 {
            // A tenant that begins to wait joins the round at its back.
            self.turns += 1;
            tenant.last_served = self.turns;
        }
        if self.unmet == 0 && after > before {
            // The queue forms now: it was empty until this instant.
            self.last_empty = now;
        }
        tenant.held -= excess;
        tenant.unmet = tenant.unmet - before + after;
        self.unmet = self.unmet - before + after;
        self.available += excess;
        self.settle(now, wake);
    }

    /// Takes one permit granted to waiter `id`, if it has one.
    pub(crate) fn take(&mut self, key: &Key, id: u64) -> bool {
        let Some(waiter) = self
            .tenants
            .get_mut(key)
            .and_then(|t| t.waiters.iter_mut().find(|w| w.id == id))
        else {
            return false;
        };
        if waiter.granted == 0 {
            return false;
        }
        waiter.granted -= 1;
        waiter.wanted -= 1;
        true
    }

    /// Waiter `id` leaves the line: what it was granted and did not take
    /// goes to the next in line.
    pub(crate) fn leave(&mut self, key: &Key, id: u64, now: Instant, wake: &mut Vec<Waker>) {
        let Some(tenant) = self.tenants.get_mut(key) else {
            return;
        };
        let Some(at) = tenant.waiters.iter().position(|w| w.id == id) else {
            return;
        };
        let waiter = tenant.waiters.remove(at).expect("position is in range");
        tenant.held -= waiter.granted;
        tenant.unmet -= waiter.unmet();
        self.unmet -= waiter.unmet();
        self.available += waiter.granted;
        self.forget_if_idle(key);
        self.settle(now, wake);
    }

    /// A permit of `key`'s comes back; `held_for` is how long a query that
    /// ran to its answer held it (`None` for one cut short: timed out,
    /// cancelled or panicked, which says nothing of how long a query takes).
    pub(crate) fn release(
        &mut self,
        key: &Key,
        held_for: Option<Duration>,
        now: Instant,
        wake: &mut Vec<Waker>,
    ) {
        if let Some(tenant) = self.tenants.get_mut(key) {
            tenant.held -= 1;
        }
        self.available += 1;
        if let Some(held_for) = held_for {
            // The weight of a new sample is 1/8, as in TCP's smoothed
            // round-trip time: recent enough to follow a slowdown, steady
            // under noise.
            let sample = u64::try_from(held_for.as_nanos()).unwrap_or(u64::MAX);
            self.mean_hold = if self.mean_hold == 0 {
                sample
            } else {
                self.mean_hold - self.mean_hold / 8 + sample / 8
            };
        }
        self.forget_if_idle(key);
        self.settle(now, wake);
    }

    /// Every waiter leaves: the limiter is closed.
    pub(crate) fn close(&mut self, wake: &mut Vec<Waker>) {
        self.closed = true;
        for tenant in self.tenants.values_mut() {
            wake.extend(tenant.waiters.iter_mut().filter_map(|w| w.waker.take()));
        }
    }

    fn forget_if_idle(&mut self, key: &Key) {
        if self
            .tenants
            .get(key)
            .is_some_and(|t| t.held == 0 && t.waiters.is_empty())
        {
            self.tenants.remove(key);
        }
    }

    /// Grants free permits to waiters, then notes whether the queue is
    /// empty.
    fn settle(&mut self, now: Instant, wake: &mut Vec<Waker>) {
        while self.available > 0 && self.unmet > 0 {
            let Some(key) = self.next_tenant() else {
                break; // every waiting tenant is at its cap
            };
            #[cfg(test)]
            self.log_grant(&key);
            self.turns += 1;
            let turns = self.turns;
            let tenant = self
                .tenants
                .get_mut(&key)
                .expect("next_tenant names a tenant");
            let waiter = tenant
                .waiters
                .iter_mut()
                .find(|w| w.unmet() > 0)
                .expect("a tenant with unmet wants has a waiter wanting");
            waiter.granted += 1;
            wake.extend(waiter.waker.take());
            tenant.held += 1;
            tenant.unmet -= 1;
            tenant.last_served = turns;
            self.unmet -= 1;
            self.available -= 1;
        }
        if self.unmet == 0 {
            self.last_empty = now;
        }
    }

    /// The waiting tenant the next permit goes to: the one holding the
    /// fewest permits for its weight; among equals, the one served (or
    /// waiting) the longest: round-robin, newcomers at the back.
    fn next_tenant(&self) -> Option<Key> {
        let cap = self.cap.map_or(usize::MAX, NonZeroUsize::get);
        self.tenants
            .iter()
            .filter(|(_, t)| t.unmet > 0 && t.held < cap)
            .min_by(|(_, a), (_, b)| {
                // a.held / a.weight against b.held / b.weight, in integers.
                let a_share = a.held as u64 * b.weight;
                let b_share = b.held as u64 * a.weight;
                a_share
                    .cmp(&b_share)
                    .then(a.last_served.cmp(&b.last_served))
            })
            .map(|(key, _)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    //! The queue's promises, as properties over random arrivals, wants,
    //! departures and releases from random tenants.

    use std::collections::HashMap;
    use std::task::Waker;
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::time::Instant;

    use super::{Key, Queue};
    use crate::TenantId;

    /// One grant: to whom, and every tenant eligible just before it, with
    /// `(held, weight)`.
    pub(crate) struct Grant {
        to: Key,
        eligible: Vec<(Key, usize, u64)>,
        /// Tenants with waiting work, at their cap or not.
        waiting: usize,
    }

    impl Queue {
        pub(super) fn log_grant(&mut self, to: &Key) {
            let cap = self.cap.map_or(usize::MAX, std::num::NonZeroUsize::get);
            let eligible = self
                .tenants
                .iter()
                .filter(|(_, t)| t.unmet > 0 && t.held < cap)
                .map(|(key, t)| (key.clone(), t.held, t.weight))
                .collect();
            let waiting = self.tenants.values().filter(|t| t.unmet > 0).count();
            self.grants_log.push(Grant {
                to: to.clone(),
                eligible,
                waiting,
            });
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A fan-out of tenant `.0` joins, wanting `.1` permits.
        Join(u8, usize),
        /// The `.0`-th running query (modulo) ends.
        Release(usize),
        /// The `.0`-th waiting fan-out (modulo) is dropped, with whatever
        /// it was granted and did not take.
        Leave(usize),
        /// The `.0`-th waiting fan-out (modulo) takes what it was granted.
        Take(usize),
        /// The `.0`-th waiting fan-out (modulo) now wants `.1` in all.
        Want(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..6u8, 1..7usize).prop_map(|(t, n)| Op::Join(t, n)),
            4 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::Leave),
            4 => any::<usize>().prop_map(Op::Take),
            1 => (any::<usize>(), 0..9usize).prop_map(|(w, n)| Op::Want(w, n)),
        ]
    }

    fn key(tenant: u8) -> Key {
        Some(TenantId::new(format!("tenant-{tenant}")).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every grant goes to a tenant holding the fewest for its weight;
        /// no waiting tenant is passed over for one holding as many or more
        /// more times in a row than there are waiting tenants; permits are
        /// conserved; a free permit never sits beside an eligible waiter;
        /// an idle tenant leaves no state.
        #[test]
        fn grants_are_fair_and_conserve_permits(
            permits in 1..8usize,
            weighted in any::<bool>(),
            cap in proptest::option::of(1..4usize),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut queue = Queue::new(permits);
            queue.cap = cap.and_then(std::num::NonZeroUsize::new);
            let now = Instant::now();
            let waker = Waker::noop();
            let mut waiters: Vec<(Key, u64)> = Vec::new();
            let mut running: Vec<Key> = Vec::new();
            // Per tenant: how many grants in a row passed it over for a
            // tenant holding as many, and the most tenants waiting during
            // that streak.
            let mut skips: HashMap<Key, (usize, usize)> = HashMap::new();
            let mut checked = 0;
            for op in ops {
                let mut wake = Vec::new();
                match op {
                    Op::Join(tenant, wanted) => {
                        let key = key(tenant);
                        if queue.tenants.get(&key).is_none_or(|t| t.unmet == 0) {
                            // A tenant that starts waiting again joins the
                            // round at its back: a new streak.
                            skips.remove(&key);
                        }
                        let weight = if weighted { u64::from(tenant % 3) + 1 } else { 1 };
                        let id = queue.join(&key, weight);
                        queue.want(&key, id, wanted, waker, now, &mut wake);
                        waiters.push((key, id));
                    }
                    Op::Release(n) if !running.is_empty() => {
                        let key = running.swap_remove(n % running.len());
                        queue.release(&key, Some(Duration::from_millis(5)), now, &mut wake);
                    }
                    Op::Leave(n) if !waiters.is_empty() => {
                        let (key, id) = waiters.remove(n % waiters.len());
                        queue.leave(&key, id, now, &mut wake);
                    }
                    Op::Take(n) if !waiters.is_empty() => {
                        let (key, id) = &waiters[n % waiters.len()];
                        while queue.take(key, *id) {
                            running.push(key.clone());
                        }
                    }
                    Op::Want(n, wanted) if !waiters.is_empty() => {
                        let (key, id) = waiters[n % waiters.len()].clone();
                        queue.want(&key, id, wanted, waker, now, &mut wake);
                    }
                    Op::Release(_) | Op::Leave(_) | Op::Take(_) | Op::Want(..) => {}
                }
                for grant in &queue.grants_log[checked..] {
                    let share = |held: usize, weight: u64| (held as u64, weight);
                    let (_, to_held, to_weight) = grant
                        .eligible
                        .iter()
                        .find(|(k, _, _)| *k == grant.to)
                        .expect("granted to an eligible tenant")
                        .clone();
                    let waiting = grant.waiting;
                    for (key, held, weight) in &grant.eligible {
                        let (a, b) = (share(to_held, to_weight), share(*held, *weight));
                        // to_held / to_weight <= held / weight
                        prop_assert!(a.0 * b.1 <= b.0 * a.1, "granted to a larger share");
                        if *key == grant.to {
                            skips.remove(key);
                        } else if a.0 * b.1 == b.0 * a.1 {
                            // Passed over for a tenant holding as many.
                            let (count, most) = skips.entry(key.clone()).or_default();
                            *count += 1;
                            *most = (*most).max(waiting);
                            prop_assert!(*count <= *most, "{key:?} skipped {count} times, at most {most} waiting");
                        }
                    }
                    // A tenant no longer eligible starts its count afresh.
                    skips.retain(|k, _| grant.eligible.iter().any(|(e, _, _)| e == k));
                }
                checked = queue.grants_log.len();
                skips.retain(|k, _| queue.tenants.contains_key(k));
                let held: usize = queue.tenants.values().map(|t| t.held).sum();
                prop_assert_eq!(queue.available + held, permits);
                prop_assert_eq!(held, running.len() + queue.tenants.values().flat_map(|t| &t.waiters).map(|w| w.granted).sum::<usize>());
                let cap = queue.cap.map_or(usize::MAX, std::num::NonZeroUsize::get);
                if queue.available > 0 {
                    prop_assert!(queue.tenants.values().all(|t| t.unmet == 0 || t.held >= cap));
                }
                prop_assert!(queue.tenants.values().all(|t| t.held > 0 || !t.waiters.is_empty()));
                for tenant in queue.tenants.values() {
                    let unmet: usize = tenant.waiters.iter().map(|w| w.unmet()).sum();
                    prop_assert_eq!(tenant.unmet, unmet);
                }
                prop_assert_eq!(queue.unmet, queue.tenants.values().map(|t| t.unmet).sum::<usize>());
            }
            // Everyone leaves and every query ends: nothing remains.
            let mut wake = Vec::new();
            for (key, id) in waiters.drain(..) {
                queue.leave(&key, id, now, &mut wake);
            }
            for key in running.drain(..) {
                queue.release(&key, Some(Duration::from_millis(5)), now, &mut wake);
            }
            prop_assert_eq!((queue.available, queue.unmet, queue.tenants.len()), (permits, 0, 0));
        }
    }
}
