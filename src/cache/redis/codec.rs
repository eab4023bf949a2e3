//! The value encoding: MessagePack of a value and when it was computed,
//! structs as maps of field names; and the [`Schema`] part of a value's key,
//! which keeps one value type's entries apart from another's.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Wall-clock milliseconds since the Unix epoch: values' ages must agree
/// across instances, which share no monotonic clock.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A value as stored: MessagePack of `[computed_at_ms, value]`, with a
/// struct's fields as a map from their names (`to_vec_named`), so a build
/// whose struct lists them in another order reads them back right, and a
/// field left out (`skip_serializing_if`) is missing, not shifting the rest.
///
/// Then, after that array, a trailer: how long the value took to compute,
/// in milliseconds, as a MessagePack unsigned integer (early refresh,
/// [`EarlyRefresh`](super::EarlyRefresh)). A build that knows no trailer
/// reads the array and ignores what follows it (`rmp_serde::from_slice`
/// reads one object), so builds with and without it share `v2` values both
/// ways; a value without it is read as computed in no time. (The time is
/// not a third array element: a reader of two elements refuses three.)
pub(super) fn encode<T: Serialize>(
    value: &T,
    computed_at_ms: u64,
    computed_in_ms: u64,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut bytes = rmp_serde::to_vec_named(&(computed_at_ms, value))?;
    rmp_serde::encode::write(&mut bytes, &computed_in_ms)?;
    Ok(bytes)
}

/// A value read back from Redis.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Stored<T> {
    pub(super) value: T,
    /// How old it is: from when it was computed, on any instance.
    pub(super) age: Duration,
    /// When it was computed, in wall-clock ms: which of two values is newer.
    pub(super) computed_at_ms: u64,
    /// How long it took to compute (zero when the writer did not say).
    pub(super) computed_in: Duration,
}

/// A stored value younger than `limit`, `Ok(None)` for one older; an error
/// for bytes that do not decode as a `T`. A trailer that is missing or not
/// an unsigned integer reads as a computation time of zero.
pub(super) fn decode_within<T: DeserializeOwned>(
    bytes: &[u8],
    limit: Duration,
) -> Result<Option<Stored<T>>, rmp_serde::decode::Error> {
    let mut reader = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    let (computed_at_ms, value) = <(u64, T)>::deserialize(&mut reader)?;
    let rest = usize::try_from(reader.position())
        .ok()
        .and_then(|read| bytes.get(read..))
        .unwrap_or_default();
    let computed_in_ms = rmp_serde::from_slice::<u64>(rest).unwrap_or(0);
    let age = Duration::from_millis(now_ms().saturating_sub(computed_at_ms));
    Ok((age < limit).then_some(Stored {
        value,
        age,
        computed_at_ms,
        computed_in: Duration::from_millis(computed_in_ms),
    }))
}

/// Which values a key may hold: a fingerprint of the value's type and the
/// schema version the user gave ([`SharedCached::schema`]). Written in the
/// key as `{fingerprint:016x}:{version}`, so a build that stores another
/// type, or bumps the version, never reads the other's values.
///
/// [`SharedCached::schema`]: super::SharedCached::schema
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Schema {
    fingerprint: u64,
    version: u32,
}

impl Schema {
    pub(super) fn of<T: ?Sized>(version: u32) -> Self {
        Self {
            fingerprint: fnv1a(std::any::type_name::<T>().as_bytes()),
            version,
        }
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}", self.fingerprint, self.version)
    }
}

/// 64-bit FNV-1a: every build and instance must agree on a type's
/// fingerprint, and std's hashers promise no stable output.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}
