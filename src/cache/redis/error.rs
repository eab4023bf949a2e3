//! [`RedisTierError`]: why the shared tier could not do what was asked.

use std::time::Duration;

use ::redis::RedisError;

/// Why the shared tier could not do what was asked: one line, without the
/// URL (it may hold a password).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let error = fanout::cache::RedisTier::connect("redis://127.0.0.1:1/", "dashboards").await.unwrap_err();
/// assert!(error.to_string().starts_with("Redis shared cache: cannot connect: "), "{error}");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Redis shared cache: {op}: {detail}")]
pub struct RedisTierError {
    op: &'static str,
    detail: String,
}

impl RedisTierError {
    pub(super) fn redis(op: &'static str, error: &RedisError) -> Self {
        Self {
            op,
            detail: error.to_string().replace(['\n', '\r'], " "),
        }
    }

    pub(super) fn timed_out(op: &'static str, limit: Duration) -> Self {
        Self {
            op,
            detail: format!("no answer within {} ms", limit.as_millis()),
        }
    }
}
