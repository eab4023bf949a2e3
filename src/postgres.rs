//! Run a PostgreSQL statement under a query's deadline, enforced by the
//! server as well as the client.
//!
//! When a fan-out drops a query that ran out of time, the client stops
//! waiting, but PostgreSQL does not know: it finishes the statement, and the
//! next query on that pooled connection waits behind it (1.75 s in a test of
//! a 2 s `pg_sleep` abandoned after 250 ms). [`query`] and [`query_one`]
//! close that gap. They set `statement_timeout` to the time left before
//! [`QueryContext::deadline`] plus [`SERVER_GRACE`], run the statement and
//! reset the setting, all pipelined in one round trip. The server then
//! cancels the statement just after the fan-out gives up on it, and the
//! connection comes back clean.
//!
//! Prepare the statement first (deadpool-postgres's `prepare_cached`, or
//! [`Client::prepare`]): a prepared statement is sent in the same round
//! trip as the settings around it.

use std::time::Duration;

use futures_util::future::try_join3;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row, Statement};

use crate::QueryContext;

/// How long after the query's deadline the server stops the statement.
///
/// The fan-out's own timer, not the server, should be what ends a late
/// query, so that it reports [`Failure::TimedOut`](crate::Failure::TimedOut)
/// (or `DeadlineExceeded`) rather than a database error. The grace covers a
/// timer firing a little late and the trip to the server; a connection
/// handed on at the deadline waits at most this long behind the cancelled
/// statement.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// // A query with 2 s left runs under `statement_timeout = 2025`.
/// assert_eq!(fanout::postgres::SERVER_GRACE, Duration::from_millis(25));
/// ```
pub const SERVER_GRACE: Duration = Duration::from_millis(25);

/// Runs `statement` with `params`, stopped by the server at `ctx`'s
/// deadline (plus [`SERVER_GRACE`]); returns its rows.
///
/// With no deadline in `ctx`, runs the statement as it is.
///
/// # Errors
///
/// The statement's own error. A statement stopped at the deadline fails with
/// SQLSTATE `57014` (`canceling statement due to statement timeout`), though
/// the fan-out has usually dropped the query by then.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::QueryContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL, or run scripts/test")?;
/// let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
/// tokio::spawn(connection);
///
/// let tenant = fanout::TenantId::new("creche-1")?;
/// let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
/// let ctx = QueryContext::new(tenant, Some(deadline));
///
/// let sleep = client.prepare("SELECT pg_sleep(5)").await?;
/// let error = fanout::postgres::query(&client, &ctx, &sleep, &[]).await.unwrap_err();
/// assert_eq!(error.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
///
/// // The connection is clean: no timeout left behind, nothing queued.
/// let setting = client.query_one("SHOW statement_timeout", &[]).await?;
/// assert_eq!(setting.get::<_, String>(0), "0");
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Dropping the returned future after its first poll leaves the three
/// messages sent: the server still resets the setting after the statement
/// ends or is cancelled, so the connection can go back to its pool.
pub async fn query(
    client: &Client,
    ctx: &QueryContext,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    under_deadline(client, ctx, client.query(statement, params)).await
}

/// Runs `statement` with `params`, stopped by the server at `ctx`'s
/// deadline (plus [`SERVER_GRACE`]); returns its one row.
///
/// # Errors
///
/// As [`query`], and an error when the statement does not return exactly
/// one row.
///
/// # Examples
///
/// ```
/// use fanout::QueryContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL, or run scripts/test")?;
/// let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
/// tokio::spawn(connection);
///
/// let ctx = QueryContext::new(fanout::TenantId::new("creche-1")?, None);
/// let statement = client.prepare("SELECT $1::text || '!'").await?;
/// let row = fanout::postgres::query_one(&client, &ctx, &statement, &[&ctx.tenant().as_str()]).await?;
/// assert_eq!(row.get::<_, String>(0), "creche-1!");
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// As [`query`].
pub async fn query_one(
    client: &Client,
    ctx: &QueryContext,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, Error> {
    under_deadline(client, ctx, client.query_one(statement, params)).await
}

/// Runs `statement` (a request on `client`, not yet polled) between
/// `SET statement_timeout` and `RESET statement_timeout`. Polled together,
/// the three requests are sent in this order before any answer is awaited:
/// one round trip.
async fn under_deadline<T>(
    client: &Client,
    ctx: &QueryContext,
    statement: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let Some(remaining) = ctx.remaining() else {
        return statement.await;
    };
    let set = format!(
        "SET statement_timeout = {}",
        statement_timeout_ms(remaining)
    );
    let ((), value, ()) = try_join3(
        client.batch_execute(&set),
        statement,
        client.batch_execute("RESET statement_timeout"),
    )
    .await?;
    Ok(value)
}

/// `remaining` plus the grace in whole milliseconds, rounded up, at least 1 (PostgreSQL reads 0 as "no
/// timeout", the opposite of a deadline that has passed) and at most the
/// setting's maximum, `i32::MAX` ms (about 24 days).
fn statement_timeout_ms(remaining: Duration) -> u128 {
    let limit = remaining.saturating_add(SERVER_GRACE);
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
