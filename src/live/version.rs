//! [`Version`]: where a subscriber is in a tenant's live state, and the
//! clock that hands versions out.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A position in a tenant's live state: every [`Update`](super::Update)
/// carries one, and a subscriber that reconnects with the last one it saw
/// ([`Subscription::resume_from`](super::Subscription::resume_from)) gets
/// only what changed since,
/// when that is still known.
///
/// Opaque: it prints as `instance.scope.counter` (for an SSE
/// `Last-Event-ID` or a query parameter) and parses back with [`FromStr`].
/// The instance part is drawn at random when the [`Live`](super::Live) is
/// built, so a version from another process, or from before a restart, is
/// never mistaken for one of this process's; the scope part names the
/// tenant and widget set, so a version resumed on another tenant or
/// another set of widgets is not either. Such a version is simply unknown,
/// and resuming from it gives a full snapshot.
///
/// # Examples
///
/// ```
/// use fanout::live::Version;
///
/// let version: Version = "1f2e3d4c.0a0b0c0d.42".parse()?;
/// assert_eq!(version.to_string(), "1f2e3d4c.0a0b0c0d.42");
/// assert!("42".parse::<Version>().is_err());
/// assert!("1f2e3d4c.42".parse::<Version>().is_err());
/// # Ok::<(), fanout::live::InvalidVersion>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub(super) instance: u32,
    /// Which tenant and widget set it belongs to (a hash): a version is
    /// known only to a subscription of the same ones.
    pub(super) scope: u32,
    pub(super) counter: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08x}.{:08x}.{}",
            self.instance, self.scope, self.counter
        )
    }
}

impl FromStr for Version {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        let mut parts = s.trim().splitn(3, '.');
        let mut hex = || match parts.next() {
            Some(part) if part.len() == 8 => {
                u32::from_str_radix(part, 16).map_err(|_| InvalidVersion)
            }
            _ => Err(InvalidVersion),
        };
        let (instance, scope) = (hex()?, hex()?);
        let counter = parts.next().ok_or(InvalidVersion)?;
        if !counter.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidVersion);
        }
        Ok(Self {
            instance,
            scope,
            counter: counter.parse().map_err(|_| InvalidVersion)?,
        })
    }
}

/// The scope of a subscription to `names` of `tenant`: FNV-1a, so the same
/// in every process.
pub(super) fn scope(tenant: &str, names: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let bytes = tenant.bytes().chain(
        names
            .iter()
            .flat_map(|name| std::iter::once(b',').chain(name.bytes())),
    );
    for byte in bytes {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A string: a JSON number loses precision past 2^53 in JavaScript.
        serializer.collect_str(self)
    }
}

/// A string that is not a [`Version`].
///
/// # Examples
///
/// ```
/// let error = "yesterday".parse::<fanout::live::Version>().unwrap_err();
/// assert_eq!(error.to_string(), "not a live dashboard version (expected `instance.scope.counter`)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a live dashboard version (expected `instance.scope.counter`)")]
pub struct InvalidVersion;

/// Hands out versions: one counter for every tenant of a [`Live`], so each
/// tenant's versions increase and no two changes share one.
///
/// [`Live`]: super::Live
#[derive(Debug)]
pub(super) struct Clock {
    instance: u32,
    counter: AtomicU64,
}

impl Clock {
    pub(super) fn new() -> Self {
        // std's per-process random keys: no dependency for one number.
        let instance = RandomState::new().build_hasher().finish() as u32;
        Self {
            instance,
            counter: AtomicU64::new(0),
        }
    }

    /// A version later than every one handed out before.
    pub(super) fn tick(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn version(&self, scope: u32, counter: u64) -> Version {
        Version {
            instance: self.instance,
            scope,
            counter,
        }
    }

    /// The counter of `version`, if this clock handed it out to a
    /// subscription of `scope`.
    pub(super) fn counter_of(&self, version: Version, scope: u32) -> Option<u64> {
        (version.instance == self.instance && version.scope == scope).then_some(version.counter)
    }
}
