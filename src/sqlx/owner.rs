//! The task that owns a pooled connection for one query, from checkout
//! until the connection is idle, outside any transaction and back in its
//! pool (or closed).
//!
//! sqlx's futures are not cancel-safe: dropped mid-protocol, the connection
//! goes back to the pool (after a ping that waits for the statement) with
//! the statement still running, or, dropped between statements, with
//! whatever the caller had set. Here the caller's future only waits for
//! this task; the task runs every step to the end whatever the caller does,
//! so there is no point at which a drop can cut the protocol.

use ::sqlx::pool::PoolConnection;
use ::sqlx::postgres::{PgArguments, PgConnection, PgRow};
use ::sqlx::{Connection, Error, Executor, PgPool, Postgres, Row};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either, join, select};
use tokio::sync::oneshot;

/// A query taken apart, so that a task can own it: its SQL, its encoded
/// arguments, and the server-side limit to run it under.
pub(super) struct Request {
    pub(super) sql: String,
    /// `None`: the simple protocol (sqlx's `raw_sql`, no parameters).
    pub(super) arguments: Option<PgArguments>,
    pub(super) persistent: bool,
    /// `statement_timeout` in milliseconds; `None` for no limit.
    pub(super) timeout_ms: Option<u128>,
}

/// Runs `request` on `conn`: `BEGIN; SET LOCAL statement_timeout = N;
/// SELECT pg_backend_pid()` (one round trip), the statement, then `COMMIT`.
///
/// `hung_up` resolves when the caller's future is dropped. Then the
/// statement, if it is running, is cancelled on the server and run to its
/// end (so the connection's protocol is never cut), and the transaction is
/// rolled back. Whenever a step fails other than with a database error
/// (I/O, protocol), the connection is closed instead of returned.
pub(super) async fn run(
    mut conn: PoolConnection<Postgres>,
    pool: PgPool,
    request: Request,
    mut hung_up: oneshot::Receiver<()>,
) -> Result<Vec<PgRow>, Error> {
    let Request {
        sql,
        arguments,
        persistent,
        timeout_ms,
    } = request;
    let opening = match timeout_ms {
        Some(ms) => format!("BEGIN; SET LOCAL statement_timeout = {ms}; SELECT pg_backend_pid()"),
        None => "BEGIN; SELECT pg_backend_pid()".to_owned(),
    };
    let pid = match backend_pid(&mut conn, &opening).await {
        Ok(pid) => pid,
        Err(error) => {
            end(conn, &error, "ROLLBACK").await;
            return Err(error);
        }
    };
    if caller_gone(&mut hung_up) {
        // Dropped before the statement was sent: nothing to cancel. (No
        // one receives this task's result from here on.)
        let _ = end_transaction(conn, "ROLLBACK").await;
        return Err(Error::WorkerCrashed);
    }

    let (result, abandoned) = {
        let statement = fetch(&mut conn, &sql, arguments, persistent);
        match select(statement, &mut hung_up).await {
            Either::Left((result, _)) => (result, false),
            Either::Right((_, statement)) => {
                // Cancelled from a connection of its own, while this one
                // reads the statement to its end. Only once the cancel
                // request has been served does anything else go out on
                // this connection, so a late cancel cannot hit it.
                let (result, ()) = join(statement, cancel(&pool, pid)).await;
                (result, true)
            }
        }
    };
    match result {
        Ok(rows) if !abandoned => match end_transaction(conn, "COMMIT").await {
            Ok(()) => Ok(rows),
            Err(error) => Err(error),
        },
        Ok(_) => {
            let _ = end_transaction(conn, "ROLLBACK").await;
            Err(Error::WorkerCrashed)
        }
        Err(error) => {
            end(conn, &error, "ROLLBACK").await;
            Err(error)
        }
    }
}

/// Whether the caller's future is gone.
fn caller_gone(hung_up: &mut oneshot::Receiver<()>) -> bool {
    !matches!(hung_up.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

/// Runs the opening batch (simple protocol, one round trip) and returns the
/// backend's process id, its last row.
async fn backend_pid(conn: &mut PgConnection, opening: &str) -> Result<i32, Error> {
    let rows = simple(conn, opening).await?;
    rows.last().ok_or(Error::RowNotFound)?.try_get(0)
}

/// `sql` by the simple protocol, its rows.
///
/// Boxed, as every sqlx future this task awaits: the compiler cannot prove
/// sqlx's executor futures `Send` for every lifetime, which `tokio::spawn`
/// asks (rust-lang/rust#102211); a `BoxFuture` states it.
fn simple<'c>(
    conn: &'c mut PgConnection,
    sql: &'c str,
) -> BoxFuture<'c, Result<Vec<PgRow>, Error>> {
    conn.fetch_all(::sqlx::raw_sql(sql))
}

/// The statement itself, with its arguments (extended protocol) or without
/// (simple protocol).
fn fetch<'c>(
    conn: &'c mut PgConnection,
    sql: &'c str,
    arguments: Option<PgArguments>,
    persistent: bool,
) -> BoxFuture<'c, Result<Vec<PgRow>, Error>> {
    match arguments {
        Some(arguments) => {
            conn.fetch_all(::sqlx::query_with(sql, arguments).persistent(persistent))
        }
        None => simple(conn, sql),
    }
}

/// Ends the helper's transaction with `command` and lets the connection go
/// back to its pool; closes it instead when that fails.
async fn end_transaction(mut conn: PoolConnection<Postgres>, command: &str) -> Result<(), Error> {
    match simple(&mut conn, command).await {
        Ok(_) => Ok(()),
        Err(error) => {
            // The transaction may still be open: never hand it on.
            tracing::warn!(%error, "{command} failed: closing the connection");
            drop(conn.detach());
            Err(error)
        }
    }
}

/// After a step failed with `error`: a database error leaves the protocol
/// in step, so the transaction is ended with `command`; anything else
/// (I/O, protocol, decoding) leaves the connection in an unknown state, and
/// it is closed.
async fn end(conn: PoolConnection<Postgres>, error: &Error, command: &str) {
    if matches!(error, Error::Database(_)) {
        let _ = end_transaction(conn, command).await;
    } else {
        tracing::warn!(%error, "query failed outside the database: closing the connection");
        drop(conn.detach());
    }
}

/// Asks the server to cancel whatever backend `pid` runs, from a new
/// connection made with the pool's options (sqlx exposes no cancel key, so
/// `pg_cancel_backend` rather than a protocol cancel request; the pid is
/// the helper's transaction's own, so it is right behind PgBouncer in
/// transaction mode too). Returns once the server has signalled the
/// backend, or has failed to.
async fn cancel(pool: &PgPool, pid: i32) {
    let options = pool.connect_options();
    let cancelled = async {
        let mut conn = PgConnection::connect_with(&options).boxed().await?;
        simple(&mut conn, &format!("SELECT pg_cancel_backend({pid})")).await?;
        // The cancel is served: closing that connection gracefully is not
        // waited for, so nothing but the statement holds this task (and
        // the pooled connection it owns) from here on.
        tokio::spawn(async move {
            let _ = conn.close().boxed().await;
        });
        Ok::<(), Error>(())
    };
    match tokio::time::timeout(CANCEL_WITHIN, cancelled).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not cancel an abandoned statement: it runs until its statement_timeout");
        }
        Err(_) => tracing::warn!(
            "no cancel connection within {CANCEL_WITHIN:?}: the abandoned statement runs until its statement_timeout"
        ),
    }
}

/// How long a cancel (a new connection and `pg_cancel_backend`) may take
/// before the helper gives up on it and lets the statement run out.
const CANCEL_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
