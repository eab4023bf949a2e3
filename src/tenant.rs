//! [`TenantId`]: the validated tenant every dashboard query is scoped to.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest tenant id accepted, in bytes.
const MAX_LEN: usize = 128;

/// A validated tenant identifier: 1 to 128 bytes of ASCII letters, digits,
/// `-`, `_` and `.`, not only dots.
///
/// The character set keeps a tenant id safe to put in log fields, metric
/// labels and cache keys (no separators such as `:` or `*`, no whitespace,
/// nothing that needs escaping). Cloning is cheap: the id is reference
/// counted, so every query of a fan-out shares one allocation.
///
/// # Examples
///
/// ```
/// use fanout::TenantId;
///
/// let tenant = TenantId::new("creche-042")?;
/// assert_eq!(tenant.as_str(), "creche-042");
/// assert_eq!(tenant.to_string(), "creche-042");
///
/// let parsed: TenantId = "creche-042".parse()?;
/// assert_eq!(parsed, tenant);
///
/// assert!(TenantId::new("creche 042").is_err());
/// # Ok::<(), fanout::InvalidTenantId>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    /// Validates `id` and wraps it.
    ///
    /// # Errors
    ///
    /// [`InvalidTenantId`] when `id` is empty, longer than 128 bytes,
    /// holds a character other than ASCII letters, digits, `-`, `_` and `.`,
    /// or is only dots (`.`, `..`).
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::{InvalidTenantId, TenantId};
    ///
    /// assert!(TenantId::new("tenant_7.eu-west").is_ok());
    /// assert_eq!(TenantId::new(""), Err(InvalidTenantId::Empty));
    /// assert_eq!(TenantId::new(".."), Err(InvalidTenantId::OnlyDots));
    /// assert!(TenantId::new("v1.2").is_ok());
    /// assert_eq!(
    ///     TenantId::new("a:b").unwrap_err().to_string(),
    ///     "tenant id has ':' at byte 1; only ASCII letters, digits, '-', '_' and '.' are allowed",
    /// );
    /// ```
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidTenantId> {
        let id = id.as_ref();
        validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    ///
    /// # Examples
    ///
    /// ```
    /// let tenant = fanout::TenantId::new("t1")?;
    /// assert_eq!(tenant.as_str(), "t1");
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(id: &str) -> Result<(), InvalidTenantId> {
    if id.is_empty() {
        return Err(InvalidTenantId::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(InvalidTenantId::TooLong { len: id.len() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Some((at, found)) = id.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(InvalidTenantId::InvalidChar { found, at });
    }
    // `.` and `..` mean something else in a path or a file name.
    if id.bytes().all(|b| b == b'.') {
        return Err(InvalidTenantId::OnlyDots);
    }
    Ok(())
}

/// Why a string is not a valid [`TenantId`].
///
/// # Examples
///
/// ```
/// use fanout::{InvalidTenantId, TenantId};
///
/// match TenantId::new("x".repeat(200)) {
///     Err(InvalidTenantId::TooLong { len }) => assert_eq!(len, 200),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidTenantId {
    /// The id is the empty string.
    #[error("tenant id is empty")]
    Empty,
    /// The id is longer than 128 bytes.
    #[error("tenant id is {len} bytes long; the limit is 128")]
    TooLong {
        /// The id's length in bytes.
        len: usize,
    },
    /// The id is only dots (`.`, `..`, ...), which mean something else in
    /// a URL path or a file name.
    #[error("tenant id is only dots")]
    OnlyDots,
    /// The id holds a character outside the allowed set.
    #[error(
        "tenant id has {found:?} at byte {at}; only ASCII letters, digits, '-', '_' and '.' are allowed"
    )]
    InvalidChar {
        /// The first offending character.
        found: char,
        /// Its byte offset in the id.
        at: usize,
    },
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenantId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for TenantId {
    type Error = InvalidTenantId;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(Self(Arc::from(s)))
    }
}
