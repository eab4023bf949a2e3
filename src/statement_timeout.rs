//! The server-side statement timeout the PostgreSQL helpers set for one
//! statement (`fanout::postgres` and `fanout::sqlx` alike).

use std::time::Duration;

/// How much later than the fan-out's own timer the server stops the
/// statement, so that the fan-out's timer, not a database error, decides
/// `TimedOut`.
pub(crate) const GRACE: Duration = Duration::from_millis(25);

/// `remaining` plus [`GRACE`] in whole milliseconds, rounded up, at least 1
/// (PostgreSQL reads 0 as "no timeout", the opposite of a deadline that has
/// passed) and at most the setting's maximum, `i32::MAX` ms (about 24
/// days).
pub(crate) fn statement_timeout_ms(remaining: Duration) -> u128 {
    let limit = remaining.saturating_add(GRACE);
    limit.as_micros().div_ceil(1000).clamp(1, i32::MAX as u128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_grace_rounds_up_and_stays_in_range() {
        assert_eq!(statement_timeout_ms(Duration::ZERO), 25);
        assert_eq!(statement_timeout_ms(Duration::from_micros(1)), 26);
        assert_eq!(statement_timeout_ms(Duration::from_micros(1_001)), 27);
        assert_eq!(statement_timeout_ms(Duration::from_secs(2)), 2_025);
        assert_eq!(statement_timeout_ms(Duration::MAX), 2_147_483_647);
    }
}
