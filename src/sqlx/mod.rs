//! Run a sqlx query under a query's deadline, enforced by the server, and
//! never hand a busy or dirty connection back to the pool, however the
//! query's future is dropped.
//!
//! sqlx has no per-query timeout and no cancel request, and its futures are
//! not cancel-safe. A fan-out drops query futures on purpose (timeouts,
//! deadlines, hung-up clients), and a plain sqlx query dropped mid-statement
//! keeps running on the server while its connection is held out of the
//! pool until the statement ends (sqlx pings it before taking it back);
//! dropped between a session `SET` and its `RESET`, the connection goes
//! back with the setting (`tests/sqlx/control.rs` shows both). [`fetch_all`],
//! [`fetch_one`] and [`fetch_optional`] close those gaps:
//!
//! - **A task owns the connection.** The helper checks a connection out of
//!   the pool and hands it, with the query, to a spawned task; the caller's
//!   future only waits for that task. The task runs
//!   `BEGIN; SET LOCAL statement_timeout = N; SELECT pg_backend_pid()` (one
//!   round trip, the simple protocol), the statement, and `COMMIT`, and
//!   only then lets the connection go back to the pool. Dropping the
//!   caller's future at any point (while checking out, during `BEGIN`,
//!   mid-statement, mid-result, during `COMMIT`) cannot cut the protocol:
//!   the task finishes what it started.
//! - **Dropped: cancelled on the server.** When the caller's future is
//!   dropped while the statement runs, the task asks the server to cancel
//!   it (`pg_cancel_backend` from a new connection made with the pool's
//!   options: sqlx does not expose the key a protocol cancel request needs),
//!   reads the statement to its end, waits for the cancel to be served, and
//!   rolls the transaction back. Only then does the connection go back to
//!   the pool: idle, outside any transaction, `statement_timeout` at its
//!   own default. A query dropped before its statement's answer arrived is
//!   always rolled back, even when the statement had finished on the
//!   server: its caller never learned that it succeeded. (Dropped once the
//!   answer is in, it is committed, as if the caller had ignored it.)
//! - **Bounded by the server.** `N` is the time left before
//!   [`QueryContext::deadline`] plus [`SERVER_GRACE`]; without a deadline
//!   there is no `SET LOCAL` and no limit (the transaction is still opened,
//!   so that the process id is that of the statement's backend). The server
//!   stops the statement even when the cancel cannot be sent.
//! - **Anything but a database error closes the connection.** An I/O or
//!   protocol error in any step, or a failed `COMMIT`/`ROLLBACK`, leaves the
//!   connection in a state the helper cannot vouch for: it is closed
//!   ([`PoolConnection::detach`](::sqlx::pool::PoolConnection::detach) and
//!   dropped) and the pool opens a replacement.
//!
//! # What it costs
//!
//! Three round trips per query against sqlx's one (the opening batch, the
//! statement, `COMMIT`): sqlx waits for each request's answer before it
//! sends the next, so unlike `fanout::postgres` on tokio-postgres the three
//! cannot be pipelined. The alternatives were measured: `Pool::begin` then
//! `set_config('statement_timeout', $1, true)` is a fourth round trip; a
//! session `SET` and `RESET` around the statement is also three, but leaks
//! the setting when dropped and is not safe behind PgBouncer in transaction
//! mode. The process id in the opening batch and the spawned task cost
//! about 0.07 and 0.05 ms. A dropped query costs a new connection for the
//! cancel (a fork on the server, a few milliseconds). BENCHMARKS.md ("sqlx:
//! what the helper costs") has the figures: in one run on the project's
//! 2-core machine, `SELECT 1` took a median of 0.17 ms through plain sqlx
//! and 0.43 ms through the helper (0.31 ms for the same three round trips
//! inline, 0.38 ms with the process id; the task is the rest), and a real
//! widget 6.27 ms and 6.88 ms.
//!
//! # Before you use it
//!
//! - **Not inside a transaction of yours.** The helpers take a connection
//!   from the pool and open their own transaction on it.
//! - **Tokio.** The task is spawned with `tokio::spawn`: call the helpers
//!   inside a Tokio runtime (sqlx's `runtime-tokio` needs one anyway).
//! - **Permissions.** `pg_cancel_backend` works for a backend of the same
//!   role (or with `pg_signal_backend`). If the cancel fails it is logged
//!   (WARN) and the statement runs until its `statement_timeout`, holding
//!   its connection until then; it is still never handed on busy.
//! - **PgBouncer in transaction mode** works: the setting is `SET LOCAL`,
//!   and the process id is read inside the helper's transaction, so it is
//!   that of the server connection running the statement.
//! - **Whole results.** The task reads every row before answering (as
//!   `fetch_all` does); [`fetch_one`] and [`fetch_optional`] return the
//!   first.
//! - **TLS.** This crate turns on no sqlx TLS feature; turn on the one you
//!   use (`sqlx/tls-rustls`, ...) in your own `Cargo.toml`. The cancel
//!   connection is made with the pool's own options, so it uses the same
//!   TLS settings as the pool.
//! - **The pool's capacity.** A dropped query's connection stays checked
//!   out until its statement has stopped: a few milliseconds after the
//!   drop, the time the cancel takes.

mod owner;

use std::panic::resume_unwind;
use std::time::Duration;

use ::sqlx::postgres::PgRow;
use ::sqlx::{Error, Execute, PgPool, Postgres};
use tokio::sync::oneshot;

use crate::QueryContext;

/// How long after the query's deadline the server stops the statement.
///
/// The fan-out's own timer, not the server, should be what ends a late
/// query, so that it reports [`Failure::TimedOut`](crate::Failure::TimedOut)
/// (or `DeadlineExceeded`) rather than a database error; the fan-out then
/// drops the query, which cancels the statement. The grace covers a timer
/// firing a little late and the trip to the server. (The same value as
/// `fanout::postgres::SERVER_GRACE`: both come from one private module, so
/// this feature does not need tokio-postgres.)
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// // A query with 2 s left runs under `SET LOCAL statement_timeout = 2025`.
/// assert_eq!(fanout::sqlx::SERVER_GRACE, Duration::from_millis(25));
/// ```
pub const SERVER_GRACE: Duration = crate::statement_timeout::GRACE;

/// Runs `query` on a connection from `pool`, stopped by the server at
/// `ctx`'s deadline (plus [`SERVER_GRACE`]) and cancelled on the server if
/// the future is dropped first; returns its rows.
///
/// `query` is any sqlx query on PostgreSQL: `sqlx::query(sql).bind(..)`
/// (prepared and cached unless `.persistent(false)`), or `sqlx::raw_sql`
/// (the simple protocol, no parameters). Its SQL is copied and its
/// arguments moved into the task that runs it.
///
/// # Errors
///
/// sqlx's error: from checking out a connection (`PoolTimedOut`, ...),
/// from encoding an argument (`Encode`, before anything is sent), from the
/// statement (`Database`; a statement stopped by the server-side deadline
/// fails with SQLSTATE `57014`), or from `COMMIT`. `WorkerCrashed` if the
/// runtime shut down while the query ran; `Configuration` when called
/// outside a Tokio runtime.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use fanout::{QueryContext, TenantId};
/// use sqlx::Row;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
/// let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await?;
///
/// let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
/// let ctx = QueryContext::new(TenantId::new("creche-1")?, Some(deadline));
/// let query = sqlx::query("SELECT $1::text || '!', current_setting('statement_timeout')")
///     .bind(ctx.tenant().as_str());
/// let rows = fanout::sqlx::fetch_all(&pool, &ctx, query).await?;
/// assert_eq!(rows[0].get::<String, _>(0), "creche-1!");
/// // The statement ran under the deadline: about 2 s left, plus the grace.
/// let limit: String = rows[0].get(1);
/// assert!(["2025ms", "2024ms", "2023ms"].contains(&limit.as_str()), "{limit}");
///
/// // Dropped mid-statement: cancelled on the server, and the pool of one
/// // gets its connection back, clean, at once.
/// let started = std::time::Instant::now();
/// let sleep = sqlx::query("SELECT pg_sleep(5)");
/// let hung_up = tokio::time::timeout(
///     Duration::from_millis(100),
///     fanout::sqlx::fetch_all(&pool, &ctx, sleep),
/// );
/// assert!(hung_up.await.is_err());
/// let row = sqlx::query("SELECT current_setting('statement_timeout')").fetch_one(&pool).await?;
/// assert_eq!(row.get::<String, _>(0), "0");
/// assert!(started.elapsed() < Duration::from_secs(4), "pg_sleep(5) was cancelled");
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Dropping the returned future at any point never returns a connection to
/// the pool that is busy, inside a transaction, or carrying the
/// `statement_timeout` setting. Once a connection is checked out, the
/// spawned task finishes the protocol, cancels a running statement on the
/// server, rolls the transaction back, and only then releases the
/// connection (see the [module](self) docs).
pub async fn fetch_all<'q, Q>(
    pool: &PgPool,
    ctx: &QueryContext,
    query: Q,
) -> Result<Vec<PgRow>, Error>
where
    Q: Execute<'q, Postgres>,
{
    let request = request(ctx, query)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
        Error::Configuration(format!("fanout::sqlx needs a Tokio runtime: {e}").into())
    })?;
    let conn = pool.acquire().await?;
    // Dropped with this future: the task then knows its caller is gone.
    let (_alive, hung_up) = oneshot::channel::<()>();
    let task = runtime.spawn(owner::run(conn, pool.clone(), request, hung_up));
    match task.await {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(payload) => resume_unwind(payload),
            // The runtime is shutting down.
            Err(_) => Err(Error::WorkerCrashed),
        },
    }
}

/// [`fetch_all`], returning the first row.
///
/// # Errors
///
/// As [`fetch_all`], and `RowNotFound` when there is no row.
///
/// # Examples
///
/// ```
/// use fanout::{QueryContext, TenantId};
/// use sqlx::Row;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
/// let pool = sqlx::PgPool::connect(&url).await?;
/// let ctx = QueryContext::new(TenantId::new("creche-1")?, None);
/// let row = fanout::sqlx::fetch_one(&pool, &ctx, sqlx::query("SELECT 40 + $1").bind(2_i32)).await?;
/// assert_eq!(row.get::<i32, _>(0), 42);
///
/// let none = fanout::sqlx::fetch_one(&pool, &ctx, sqlx::query("SELECT 1 WHERE false")).await;
/// assert!(matches!(none, Err(sqlx::Error::RowNotFound)));
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// As [`fetch_all`].
pub async fn fetch_one<'q, Q>(pool: &PgPool, ctx: &QueryContext, query: Q) -> Result<PgRow, Error>
where
    Q: Execute<'q, Postgres>,
{
    fetch_optional(pool, ctx, query)
        .await?
        .ok_or(Error::RowNotFound)
}

/// [`fetch_all`], returning the first row if there is one.
///
/// # Errors
///
/// As [`fetch_all`].
///
/// # Examples
///
/// ```
/// use fanout::{QueryContext, TenantId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
/// let pool = sqlx::PgPool::connect(&url).await?;
/// let ctx = QueryContext::new(TenantId::new("creche-1")?, None);
/// let query = sqlx::query("SELECT 1 WHERE $1 = 'creche-2'").bind(ctx.tenant().as_str());
/// assert!(fanout::sqlx::fetch_optional(&pool, &ctx, query).await?.is_none());
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// As [`fetch_all`].
pub async fn fetch_optional<'q, Q>(
    pool: &PgPool,
    ctx: &QueryContext,
    query: Q,
) -> Result<Option<PgRow>, Error>
where
    Q: Execute<'q, Postgres>,
{
    Ok(fetch_all(pool, ctx, query).await?.into_iter().next())
}

/// Takes `query` apart for the task: its SQL copied, its arguments
/// (encoded by `bind`; an encoding error surfaces here) moved, and the
/// server-side limit from `ctx`.
fn request<'q, Q>(ctx: &QueryContext, mut query: Q) -> Result<owner::Request, Error>
where
    Q: Execute<'q, Postgres>,
{
    let arguments = query.take_arguments().map_err(Error::Encode)?;
    Ok(owner::Request {
        sql: query.sql().to_owned(),
        arguments,
        persistent: query.persistent(),
        timeout_ms: ctx
            .remaining()
            .map(crate::statement_timeout::statement_timeout_ms),
    })
}
