//! [`Version`]: where a subscriber is in a tenant's live state, and the
//! clock that hands versions out.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A position in a tenant's live state: every [`Update`](super::Update)
/// carries one, and a subscriber that reconnects with the last one it saw
/// ([`Live::resume`](super::Live::resume)) gets only what changed since,
/// when that is still known.
///
/// Opaque: it prints as `instance.counter` (for an SSE `Last-Event-ID` or a
/// query parameter) and parses back with [`FromStr`]. The instance part is
/// drawn at random when the [`Live`](super::Live) is built, so a version
/// from another process, or from before a restart, is never mistaken for
/// one of this process's: it is simply unknown, and resuming from it gives
/// a full snapshot.
///
/// # Examples
///
/// ```
/// use fanout::live::Version;
///
/// let version: Version = "1f2e3d4c.42".parse()?;
/// assert_eq!(version.to_string(), "1f2e3d4c.42");
/// assert!("42".parse::<Version>().is_err());
/// # Ok::<(), fanout::live::InvalidVersion>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub(super) instance: u32,
    pub(super) counter: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}.{}", self.instance, self.counter)
    }
}

impl FromStr for Version {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, InvalidVersion> {
        let (instance, counter) = s.trim().split_once('.').ok_or(InvalidVersion)?;
        if instance.len() != 8 {
            return Err(InvalidVersion);
        }
        Ok(Self {
            instance: u32::from_str_radix(instance, 16).map_err(|_| InvalidVersion)?,
            counter: counter.parse().map_err(|_| InvalidVersion)?,
        })
    }
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
/// assert_eq!(error.to_string(), "not a live dashboard version (expected `instance.counter`)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a live dashboard version (expected `instance.counter`)")]
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

    pub(super) fn version(&self, counter: u64) -> Version {
        Version {
            instance: self.instance,
            counter,
        }
    }

    /// The counter of `version`, if this clock handed it out.
    pub(super) fn counter_of(&self, version: Version) -> Option<u64> {
        (version.instance == self.instance).then_some(version.counter)
    }
}
