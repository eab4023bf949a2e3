//! [`Generations`]: each invalidated tenant's current generation, kept only
//! as long as a value from before its invalidation could still be served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::TenantId;

/// How long past the longest `keep_for` a record is kept: covers a value
/// stored in the moment between a load's generation check and its insert.
const SLACK: Duration = Duration::from_secs(60);

/// Tenants never invalidated have no record and are at generation 0. An
/// invalidation gives the tenant a number never used before in this cache,
/// so a key from an older generation can never match again. A record is
/// dropped once every value stored before it was made has expired (the
/// longest `keep_for` stored so far, plus [`SLACK`]): the tenant is then
/// back at 0, whose values are all gone.
///
/// Records are swept on an invalidation when the table has doubled since
/// the last sweep, or a record lifetime has passed since it: the table holds
/// about twice the tenants invalidated within the last two lifetimes at
/// most, and sweeping costs O(1) per invalidation on average.
#[derive(Default)]
pub(super) struct Generations {
    records: RwLock<Table>,
    last_number: AtomicU64,
    /// The longest `keep_for` of any value stored, in milliseconds.
    longest_keep_ms: AtomicU64,
}

#[derive(Default)]
struct Table {
    by_tenant: HashMap<TenantId, Record>,
    len_after_sweep: usize,
    swept_at: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Record {
    number: u64,
    at: Instant,
}

/// Sweeps start once the table is past this size.
const MIN_SWEEP: usize = 64;

impl Generations {
    pub(super) fn current(&self, tenant: &TenantId) -> u64 {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        records
            .by_tenant
            .get(tenant)
            .map_or(0, |record| record.number)
    }

    pub(super) fn invalidate(&self, tenant: &TenantId) -> u64 {
        let number = self.last_number.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut table = self.records.write().unwrap_or_else(PoisonError::into_inner);
        table
            .by_tenant
            .insert(tenant.clone(), Record { number, at: now });
        let keep = self.record_lifetime();
        let len = table.by_tenant.len();
        let doubled = len >= MIN_SWEEP.max(2 * table.len_after_sweep);
        // After a burst, the records it left expire within one lifetime.
        let overdue = len > MIN_SWEEP
            && table
                .swept_at
                .is_none_or(|at| now.saturating_duration_since(at) >= keep);
        if doubled || overdue {
            table
                .by_tenant
                .retain(|_, record| now.saturating_duration_since(record.at) < keep);
            table.len_after_sweep = table.by_tenant.len();
            table.swept_at = Some(now);
        }
        number
    }

    /// Notes that a value kept for `keep_for` was stored.
    pub(super) fn stored(&self, keep_for: Duration) {
        let ms = u64::try_from(keep_for.as_millis()).unwrap_or(u64::MAX);
        self.longest_keep_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How many tenants have a record.
    pub(super) fn len(&self) -> usize {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        records.by_tenant.len()
    }

    /// How long a record is kept after its tenant's last invalidation. A
    /// load older than this may have started before an invalidation whose
    /// record is gone: it must neither store its value nor take joiners.
    pub(super) fn record_lifetime(&self) -> Duration {
        Duration::from_millis(self.longest_keep_ms.load(Ordering::Relaxed)).saturating_add(SLACK)
    }
}
