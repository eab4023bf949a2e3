//! [`EarlyRefresh`]: probabilistic early expiration of shared values
//! ("XFetch": Vattani, Chierichetti and Lowenstein, *Optimal Probabilistic
//! Cache Stampede Prevention*, VLDB 2015).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// When an instance recomputes a shared value before it expires: each read
/// of a value `age` old, which took `delta` to compute and expires at
/// `ttl`, draws `u` uniform in (0, 1] and refreshes the value early if
///
/// ```text
/// age + delta × beta × (−ln u) ≥ ttl
/// ```
///
/// (the paper's `now − delta·beta·ln(rand()) ≥ expiry`). Far from expiry
/// this almost never happens; within about `delta × beta` of it, it
/// becomes likely, and the more often a value is read, the sooner one read
/// decides. The instance that decides takes the key's lock and recomputes
/// (see [`SharedCached`](super::SharedCached#early-refresh)); every other
/// read keeps getting the cached value without waiting.
///
/// `beta` scales how early: 0 turns early refresh off (values are
/// recomputed once expired, as before), above 1 refreshes earlier, below 1
/// later. The default is 1, the value the paper finds optimal for its
/// model and recommends as the default: a value is refreshed, on average,
/// a small multiple of its computation time before it expires, so a cheap
/// query costs almost nothing extra and a slow one is refreshed well ahead
/// of its expiry.
///
/// The random draws come from a per-thread generator (`fastrand`), or,
/// for tests and reproducible runs, from one seeded with
/// [`seed`](Self::seed).
///
/// # Examples
///
/// ```
/// use fanout::cache::EarlyRefresh;
///
/// assert_eq!(EarlyRefresh::default().beta(), 1.0);
/// assert_eq!(EarlyRefresh::OFF.beta(), 0.0);
/// let eager = EarlyRefresh::new(2.0)?;
/// assert_eq!(eager.beta(), 2.0);
/// assert!(EarlyRefresh::new(f64::NAN).is_err());
/// assert!(EarlyRefresh::new(-1.0).is_err());
/// # Ok::<(), fanout::cache::InvalidEarlyRefresh>(())
/// ```
#[derive(Clone)]
pub struct EarlyRefresh {
    beta: f64,
    seeded: Option<Arc<Mutex<fastrand::Rng>>>,
}

/// A `beta` that [`EarlyRefresh::new`] refuses: not a number, negative or
/// infinite.
///
/// # Examples
///
/// ```
/// let error = fanout::cache::EarlyRefresh::new(-0.5).unwrap_err();
/// assert_eq!(error.to_string(), "early refresh beta must be finite and at least 0, not -0.5");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("early refresh beta must be finite and at least 0, not {beta}")]
pub struct InvalidEarlyRefresh {
    beta: f64,
}

impl EarlyRefresh {
    /// No early refresh: a shared value is recomputed once it has expired.
    ///
    /// # Examples
    ///
    /// See [`EarlyRefresh`].
    pub const OFF: Self = Self {
        beta: 0.0,
        seeded: None,
    };

    /// Early refresh scaled by `beta` (0 turns it off, 1 is the default).
    ///
    /// # Errors
    ///
    /// [`InvalidEarlyRefresh`] for a `beta` that is NaN, negative or
    /// infinite. (−0.0 is accepted, as 0.)
    ///
    /// # Examples
    ///
    /// See [`EarlyRefresh`].
    pub fn new(beta: f64) -> Result<Self, InvalidEarlyRefresh> {
        if beta.is_finite() && beta >= 0.0 {
            Ok(Self {
                // −0.0 as 0.
                beta: if beta == 0.0 { 0.0 } else { beta },
                seeded: None,
            })
        } else {
            Err(InvalidEarlyRefresh { beta })
        }
    }

    /// The `beta` in use.
    ///
    /// # Examples
    ///
    /// See [`EarlyRefresh`].
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Draws from a generator seeded with `seed`, shared by the clones of
    /// this value (and the queries given them), instead of a per-thread
    /// one: the same reads in the same order make the same decisions.
    ///
    /// # Examples
    ///
    /// ```
    /// use fanout::cache::EarlyRefresh;
    ///
    /// let reproducible = EarlyRefresh::default().seed(7);
    /// assert_eq!(reproducible.beta(), 1.0);
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seeded = Some(Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))));
        self
    }

    /// Whether a read of a value `age` old, computed in `computed_in` and
    /// expiring at `ttl`, refreshes it early; one random draw.
    pub(super) fn is_due(&self, age: Duration, computed_in: Duration, ttl: Duration) -> bool {
        if age >= ttl {
            return true;
        }
        if self.beta == 0.0 || computed_in.is_zero() {
            return false;
        }
        // fastrand's f64 is in [0, 1); 1 − it is in (0, 1], as XFetch needs.
        let draw = match &self.seeded {
            Some(rng) => rng.lock().unwrap_or_else(PoisonError::into_inner).f64(),
            None => fastrand::f64(),
        };
        is_due(age, computed_in, ttl, self.beta, 1.0 - draw)
    }
}

/// The XFetch rule for one draw `u` in (0, 1]: `age + computed_in × beta ×
/// (−ln u) ≥ ttl`. Monotone: for a given `u`, false up to one age and true
/// from it on; true at `ttl` whatever `u`; false before `ttl` for `u = 1`,
/// `beta = 0` or `computed_in = 0`.
pub(super) fn is_due(
    age: Duration,
    computed_in: Duration,
    ttl: Duration,
    beta: f64,
    u: f64,
) -> bool {
    if age >= ttl {
        return true;
    }
    let gap = computed_in.as_secs_f64() * beta * -u.ln();
    // NaN (0 × ∞ for u = 0, outside the domain) compares false: not due.
    gap >= (ttl - age).as_secs_f64()
}

impl Default for EarlyRefresh {
    /// `beta` 1: see [`EarlyRefresh`].
    fn default() -> Self {
        Self {
            beta: 1.0,
            seeded: None,
        }
    }
}

impl fmt::Debug for EarlyRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EarlyRefresh")
            .field("beta", &self.beta)
            .field("seeded", &self.seeded.is_some())
            .finish()
    }
}
