//! [`DecodeFailures`]: stored values that did not decode, counted and
//! logged at a bounded rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::health::WARN_INTERVAL;

/// How many values read from Redis did not decode as their query's type,
/// and when that was last a WARN: at most one per tier per
/// [`WARN_INTERVAL`], DEBUG otherwise, as a service reading a key written
/// by an incompatible build would otherwise log on every load.
#[derive(Default)]
pub(super) struct DecodeFailures {
    count: AtomicU64,
    warned_at: Mutex<Option<Instant>>,
}

impl DecodeFailures {
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(super) fn record(
        &self,
        namespace: &str,
        query: &'static str,
        error: &rmp_serde::decode::Error,
    ) {
        self.count.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::redis_decode_failed(query);
        let warn = {
            let mut warned_at = self
                .warned_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let warn = warned_at.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
            if warn {
                *warned_at = Some(now);
            }
            warn
        };
        if warn {
            tracing::warn!(
                namespace,
                query,
                %error,
                "a shared cache value does not decode as its query's type; treating it as a miss \
                 (a build with an incompatible value type under the same schema version?)"
            );
        } else {
            tracing::debug!(namespace, query, %error, "a shared cache value does not decode");
        }
    }
}
