//! Run a PostgreSQL statement under a query's deadline, enforced by the
//! server as well as the client, and cancelled on the server when the query
//! is dropped.
//!
//! When a fan-out drops a query that ran out of time (or its caller hangs
//! up), the client stops waiting, but PostgreSQL does not know: it finishes
//! the statement, and the next query on that pooled connection waits behind
//! it. [`query`] and [`query_one`] close that gap twice over:
//!
//! - **Dropped: cancelled at once.** From its first poll until its statement
//!   completes, the returned future holds a guard; dropping it sends a
//!   cancel request for the connection (tokio-postgres's
//!   [`CancelToken`]) from a task of its own.
//!   The statement stops within milliseconds, whatever dropped it.
//! - **Bounded by the server.** With a deadline in the [`QueryContext`], the
//!   statement runs as
//!   `BEGIN; SET LOCAL statement_timeout = N` · statement · `COMMIT`, with
//!   `N` the time left before [`QueryContext::deadline`] plus
//!   [`SERVER_GRACE`]. The three requests are pipelined: one round trip. The
//!   server then stops the statement even when no cancel request can be sent
//!   (the future was dropped outside a Tokio runtime, the cancel connection
//!   failed).
//!
//! `SET LOCAL` ends with its transaction however the statement ends: an
//! error (even one raised before the statement is sent, such as a wrong
//! parameter count or a parameter of the wrong type), a cancel, a timeout,
//! or a dropped future. `COMMIT` of a failed transaction rolls it back. The
//! connection goes back to its pool idle, outside any transaction, with
//! `statement_timeout` at its own default. `tests/postgres/clean_connection.rs`
//! checks each of those against a real server.
//!
//! # Before you use it
//!
//! - **Not inside a transaction.** The helpers open and commit their own
//!   transaction. On a connection already inside one, `BEGIN` only warns and
//!   the helper's `COMMIT` commits *your* transaction early. Use them on a
//!   connection in autocommit mode, as a pool hands it out.
//! - **Prepare first** (deadpool-postgres's `prepare_cached`, or
//!   [`Client::prepare`]): a prepared statement is sent in the same round
//!   trip as the transaction around it. Preparing is not covered: it is a
//!   round trip of its own that takes the same table locks as the statement,
//!   and a query dropped while preparing leaves the `Parse` waiting on the
//!   server. Prepare at connect time, or give the connection a default
//!   `statement_timeout` (`options=-c statement_timeout=5s`), which bounds
//!   preparing and which the helpers override for their statement only.
//! - **PgBouncer in transaction mode** works: the setting is made with
//!   `SET LOCAL` inside the helper's transaction, so it lives and dies on the
//!   one server connection PgBouncer assigns to that transaction. (A session
//!   `SET` would not: it would stay on a server connection PgBouncer then
//!   hands to other clients.) PgBouncer forwards cancel requests to the right
//!   server connection. Prepared statements behind it need PgBouncer 1.21 or
//!   newer with `max_prepared_statements` set.
//! - **TLS.** [`query`] and [`query_one`] send the cancel request without
//!   TLS ([`NoTls`]). Under `sslmode=prefer` (tokio-postgres's default) that
//!   works, in clear text: the request carries only the backend's process id
//!   and a secret key, no query data, but someone who can read your traffic
//!   could use them to cancel your statements. Under `sslmode=require` a
//!   cancel without TLS fails, and the statement runs on until its
//!   `statement_timeout`. Pass your TLS connector to [`query_with_tls`] and
//!   [`query_one_with_tls`] to send the cancel request over TLS.
//! - **The race.** Cancellation is best effort. If the statement finishes
//!   just as the future is dropped, the cancel request can reach the server
//!   after it and stop whatever that backend runs next: the helper's
//!   `COMMIT` (harmless for a read; a write is then rolled back), or the
//!   next statement of whoever took the connection from the pool, which then
//!   fails with SQLSTATE `57014` (`canceling statement due to user request`)
//!   and falls back like any failed query. The window is the time the cancel
//!   request takes to reach the server, well under a millisecond on a local
//!   network.
//! - **Pools: recycle with a round trip.** A dropped query's connection goes
//!   back to the pool at once, while its statement is still being cancelled.
//!   deadpool-postgres's `RecyclingMethod::Verified` runs an empty query on
//!   checkout; it waits behind everything still queued on that connection,
//!   so the next user starts on an idle connection (and a dead one is
//!   replaced). `RecyclingMethod::Fast` hands the connection on while the
//!   cancelled statement may still be unwinding; that is correct too
//!   (requests on a connection run in order) but the next user's first
//!   statement can wait a few milliseconds behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join3;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Error, NoTls, Row, Socket, Statement};

use crate::QueryContext;

/// How long after the query's deadline the server stops the statement.
///
/// The fan-out's own timer, not the server, should be what ends a late
/// query, so that it reports [`Failure::TimedOut`](crate::Failure::TimedOut)
/// (or `DeadlineExceeded`) rather than a database error; the fan-out then
/// drops the query, which cancels the statement. The grace covers a timer
/// firing a little late and the trip to the server.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// // A query with 2 s left runs under `SET LOCAL statement_timeout = 2025`.
/// assert_eq!(fanout::postgres::SERVER_GRACE, Duration::from_millis(25));
/// ```
pub const SERVER_GRACE: Duration = Duration::from_millis(25);

/// Runs `statement` with `params`, stopped by the server at `ctx`'s
/// deadline (plus [`SERVER_GRACE`]) and cancelled on the server if the
/// future is dropped first; returns its rows.
///
/// With no deadline in `ctx`, runs the statement as it is (still cancelled
/// when dropped). Read the [module](self) docs before use: not on a
/// connection inside a transaction; the cancel request is sent without TLS.
///
/// # Errors
///
/// The statement's own error. A statement stopped at the deadline fails with
/// SQLSTATE `57014` (`canceling statement due to statement timeout`), though
/// the fan-out has usually dropped the query by then. With a deadline, an
/// error of the `BEGIN` or `COMMIT` around the statement.
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
/// // The connection is clean: no timeout left behind, no transaction open.
/// let setting = client.query_one("SHOW statement_timeout", &[]).await?;
/// assert_eq!(setting.get::<_, String>(0), "0");
/// // Inside a transaction, now() would be when it began. (Simple protocol:
/// // one timestamp per statement.)
/// let outside = client.simple_query("SELECT now() = statement_timestamp()").await?;
/// use tokio_postgres::SimpleQueryMessage::Row;
/// assert!(matches!(&outside[1], Row(row) if row.get(0) == Some("t")));
///
/// // Dropped mid-statement: cancelled on the server, the connection free.
/// let started = std::time::Instant::now();
/// let ctx = QueryContext::new(fanout::TenantId::new("creche-1")?, None);
/// let hung_up = tokio::time::timeout(
///     Duration::from_millis(100),
///     fanout::postgres::query(&client, &ctx, &sleep, &[]),
/// );
/// assert!(hung_up.await.is_err());
/// client.query_one("SELECT 1", &[]).await?;
/// assert!(started.elapsed() < Duration::from_secs(4), "pg_sleep(5) was cancelled");
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Dropping the returned future before it completes sends a cancel request
/// for its statement from a spawned task (when dropped inside a Tokio
/// runtime; outside one, only the server-side timeout stops it). Everything
/// the helper sends goes out on its first poll, so the transaction is always
/// closed and the connection can go back to its pool at once.
pub async fn query(
    client: &Client,
    ctx: &QueryContext,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    under_deadline(client, ctx, client.query(statement, params), NoTls).await
}

/// Runs `statement` with `params`, stopped by the server at `ctx`'s
/// deadline (plus [`SERVER_GRACE`]) and cancelled on the server if the
/// future is dropped first; returns its one row.
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
    under_deadline(client, ctx, client.query_one(statement, params), NoTls).await
}

/// [`query`], sending the cancel request through `tls`: pass the connector
/// the connection was made with when the server requires TLS.
///
/// # Errors
///
/// As [`query`].
///
/// # Examples
///
/// ```
/// use fanout::QueryContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL, or run scripts/test")?;
/// // In production, e.g. postgres-native-tls's `MakeTlsConnector`.
/// let tls = tokio_postgres::NoTls;
/// let (client, connection) = tokio_postgres::connect(&url, tls).await?;
/// tokio::spawn(connection);
///
/// let ctx = QueryContext::new(fanout::TenantId::new("creche-1")?, None);
/// let statement = client.prepare("SELECT 40 + 2").await?;
/// let rows = fanout::postgres::query_with_tls(&client, &ctx, &statement, &[], tls).await?;
/// assert_eq!(rows[0].get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// As [`query`].
pub async fn query_with_tls<M>(
    client: &Client,
    ctx: &QueryContext,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    tls: M,
) -> Result<Vec<Row>, Error>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    under_deadline(client, ctx, client.query(statement, params), tls).await
}

/// [`query_one`], sending the cancel request through `tls`: pass the
/// connector the connection was made with when the server requires TLS.
///
/// # Errors
///
/// As [`query_one`].
///
/// # Examples
///
/// ```
/// use fanout::QueryContext;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL, or run scripts/test")?;
/// // In production, e.g. postgres-native-tls's `MakeTlsConnector`.
/// let tls = tokio_postgres::NoTls;
/// let (client, connection) = tokio_postgres::connect(&url, tls).await?;
/// tokio::spawn(connection);
///
/// let ctx = QueryContext::new(fanout::TenantId::new("creche-1")?, None);
/// let statement = client.prepare("SELECT 40 + 2").await?;
/// let row = fanout::postgres::query_one_with_tls(&client, &ctx, &statement, &[], tls).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// As [`query`].
pub async fn query_one_with_tls<M>(
    client: &Client,
    ctx: &QueryContext,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    tls: M,
) -> Result<Row, Error>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    under_deadline(client, ctx, client.query_one(statement, params), tls).await
}

/// Runs `statement` (a request on `client`, not yet polled) inside
/// `BEGIN; SET LOCAL statement_timeout` · `COMMIT`, cancelling it on the
/// server if dropped before it completes.
async fn under_deadline<T, M>(
    client: &Client,
    ctx: &QueryContext,
    statement: impl Future<Output = Result<T, Error>>,
    tls: M,
) -> Result<T, Error>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    // Armed from here, the first poll: from now on the statement may be on
    // the wire. Taken before sending, so no await stands between the two.
    let guard = CancelOnDrop::new(client.cancel_token(), tls);
    let Some(remaining) = ctx.remaining() else {
        let result = statement.await;
        guard.disarm();
        return result;
    };
    let begin = format!(
        "BEGIN; SET LOCAL statement_timeout = {}",
        statement_timeout_ms(remaining)
    );
    // Disarmed as soon as the statement itself is done: a cancel sent while
    // only `COMMIT` is outstanding could roll back a write that succeeded.
    let statement = async {
        let result = statement.await;
        guard.disarm();
        result
    };
    // `join3`, not `try_join3`: each request is sent on its first poll, and
    // `try_join3` stops polling at the first error, which could leave the
    // transaction open. Polled together, all three are sent in order before
    // any answer is awaited.
    let (begun, value, committed) = join3(
        client.batch_execute(&begin),
        statement,
        client.batch_execute("COMMIT"),
    )
    .await;
    // A failed `BEGIN` explains a failed statement, so it comes first.
    begun?;
    let value = value?;
    committed?;
    Ok(value)
}

/// Sends a cancel request for its connection when dropped while armed.
struct CancelOnDrop<M>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    token: CancelToken,
    /// Taken by the first drop that cancels; `Option` so `Drop` can move it.
    tls: Option<M>,
    armed: AtomicBool,
}

impl<M> CancelOnDrop<M>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn new(token: CancelToken, tls: M) -> Self {
        Self {
            token,
            tls: Some(tls),
            armed: AtomicBool::new(true),
        }
    }

    /// The statement completed: nothing left to cancel.
    fn disarm(&self) {
        // Atomic only so the guard is `Sync` (borrowed across an await in a
        // `Send` future); one task reads and writes it.
        self.armed.store(false, Ordering::Relaxed);
    }
}

impl<M> Drop for CancelOnDrop<M>
where
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn drop(&mut self) {
        if !*self.armed.get_mut() {
            return;
        }
        let Some(tls) = self.tls.take() else { return };
        // Outside a runtime there is nowhere to send from; the server-side
        // timeout (with a deadline) still ends the statement.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "query dropped outside a Tokio runtime: its statement was not cancelled"
            );
            return;
        };
        let token = self.token.clone();
        // A task of its own: Drop cannot await, and the cancel must go out
        // even though nobody waits for it.
        runtime.spawn(async move {
            if let Err(error) = token.cancel_query(tls).await {
                tracing::warn!(%error, "could not cancel an abandoned statement");
            }
        });
    }
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
