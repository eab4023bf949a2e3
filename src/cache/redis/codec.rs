//! The value encoding: MessagePack of a value and when it was computed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Wall-clock milliseconds since the Unix epoch: values' ages must agree
/// across instances, which share no monotonic clock.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A value as stored: MessagePack of `[computed_at_ms, value]`.
pub(super) fn encode<T: Serialize>(
    value: &T,
    computed_at_ms: u64,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec(&(computed_at_ms, value))
}

/// A stored value younger than `limit`, and its age. One that does not
/// decode as a `T` (stored by another version of the service) is a miss.
pub(super) fn decode_within<T: DeserializeOwned>(
    bytes: &[u8],
    limit: Duration,
    query: &str,
) -> Option<(T, Duration)> {
    match rmp_serde::from_slice::<(u64, T)>(bytes) {
        Ok((computed_at_ms, value)) => {
            let age = Duration::from_millis(now_ms().saturating_sub(computed_at_ms));
            (age < limit).then_some((value, age))
        }
        Err(error) => {
            tracing::debug!(query, %error, "ignoring a shared cache value that does not decode");
            None
        }
    }
}
