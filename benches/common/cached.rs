//! The hand-written baseline of the cached path: six moka lookups joined
//! with `tokio::join!`, keyed as `fanout::cache` keys its entries (tenant,
//! the tenant's generation, query name), the generation read once per
//! dashboard from a table of invalidated tenants, as a service writing its
//! own cache would.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use fanout::TenantId;

/// The six widget names of the cached benches.
pub const NAMES: [&str; 6] = [
    "total_revenue",
    "outstanding",
    "child_count",
    "invoice_stats",
    "recent_payments",
    "arrears",
];

type Key = (TenantId, u64, &'static str);

/// A hand-written per-tenant cache: moka entries and tenant generations.
pub struct HandWritten {
    entries: moka::future::Cache<Key, Arc<i64>>,
    generations: RwLock<HashMap<TenantId, u64>>,
}

impl HandWritten {
    /// A cache holding `value` for each of [`NAMES`] for `tenant`.
    pub async fn filled(tenant: &TenantId, value: i64) -> Self {
        let cache = Self {
            entries: moka::future::Cache::new(10_000),
            generations: RwLock::default(),
        };
        for name in NAMES {
            let key = (tenant.clone(), cache.generation(tenant), name);
            cache.entries.insert(key, Arc::new(value)).await;
        }
        cache
    }

    fn generation(&self, tenant: &TenantId) -> u64 {
        let generations = self.generations.read().unwrap_or_else(|e| e.into_inner());
        generations.get(tenant).copied().unwrap_or(0)
    }

    /// Six lookups joined, a miss counting as 0: the sum of the values.
    pub async fn six(&self, tenant: &TenantId) -> i64 {
        let generation = self.generation(tenant);
        let keys = NAMES.map(|name| (tenant.clone(), generation, name));
        let (a, b, c, d, e, f) = tokio::join!(
            self.entries.get(&keys[0]),
            self.entries.get(&keys[1]),
            self.entries.get(&keys[2]),
            self.entries.get(&keys[3]),
            self.entries.get(&keys[4]),
            self.entries.get(&keys[5]),
        );
        [a, b, c, d, e, f]
            .into_iter()
            .map(|v| v.map_or(0, |v| *v))
            .sum()
    }
}
