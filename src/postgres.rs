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
//!   [`CancelToken`](tokio_postgres::CancelToken)) from a task of its own.
//!   The statement stops within milliseconds, whatever dropped it. A
//!   statement that already finished, its answer waiting for a future
//!   nobody polled (a stream feeding a slow client, a parked cache load),
//!   is not cancelled: the drop looks at the answer first.
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
//! - **One helper at a time per connection.** A `Client` can be shared by
//!   several tasks, but two helpers running on it at once would interleave
//!   their `BEGIN`s and `COMMIT`s. Give each query its own pooled
//!   connection, as a pool does.
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
//! - **The race.** Cancellation is best effort. The cancel request goes to
//!   the backend, not to a statement: if the statement finishes between the
//!   drop and the request's arrival (or had finished, its answer still on
//!   the wire, or larger than the few socket reads tokio-postgres buffers
//!   ahead of its reader), the request stops whatever that backend runs
//!   next. The helper makes that harmless for the connection: with a
//!   deadline, a drop that cancels also queues `ROLLBACK` on the
//!   connection, behind the helper's `COMMIT` and before anything the
//!   connection's next user sends. A cancel request interrupts one
//!   statement, the first it finds running (a backend waiting for a command
//!   discards it), so: if it hits `COMMIT`, which leaves the transaction
//!   open and aborted, the `ROLLBACK` closes it; if it hits the `ROLLBACK`,
//!   `COMMIT` went through and there is nothing to close (a `ROLLBACK`
//!   outside a transaction only warns). The connection never goes back to
//!   its pool inside a transaction. What is left: a write that finished
//!   just as its query was dropped can be rolled back (its caller never
//!   learned it succeeded), and a request arriving after the `ROLLBACK`,
//!   while the next user's first statement runs, fails that statement with
//!   SQLSTATE `57014` (`canceling statement due to user request`), which
//!   falls back like any failed query. The window is the time the cancel
//!   request takes to reach the server (a new connection and, on the
//!   server, a fork: a few milliseconds on a local network) less the time
//!   the `ROLLBACK` and the pool's checkout take.
//! - **A `ToSql` that panics** reaches the caller, after the helper has sent
//!   `COMMIT`. (tokio-postgres 0.7 leaves the half-encoded statement in the
//!   client's write buffer, so that `COMMIT` goes out malformed and the
//!   server closes the connection, rolling the transaction back; a pool
//!   then replaces it.)
//! - **Pools: recycle with a round trip.** A dropped query's connection goes
//!   back to the pool at once, while its statement is still being cancelled.
//!   deadpool-postgres's `RecyclingMethod::Verified` runs an empty query on
//!   checkout; it waits behind everything still queued on that connection,
//!   so the next user starts on an idle connection (and a dead one is
//!   replaced). `RecyclingMethod::Fast` hands the connection on while the
//!   cancelled statement may still be unwinding; that is correct too
//!   (requests on a connection run in order) but the next user's first
//!   statement can wait a few milliseconds behind it.

use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::join3;
use futures_util::task::noop_waker_ref;
use pin_project_lite::pin_project;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, NoTls, Row, Socket, Statement};

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
pub const SERVER_GRACE: Duration = crate::statement_timeout::GRACE;

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
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
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
/// runtime; outside one, only the server-side timeout stops it), unless the
/// statement's answer has already arrived; with a deadline, it also queues
/// `ROLLBACK`, in case the cancel request lands on the helper's `COMMIT`
/// (see the [module](self) docs). Everything the helper sends goes out on
/// its first poll or in the drop, so the transaction is always closed and
/// the connection can go back to its pool at once.
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
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
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
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
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
/// # let url = throwaway::database_url(); // DATABASE_URL, or a throw-away server
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
    let Some(remaining) = ctx.remaining() else {
        // No transaction of ours: nothing for a late cancel to break but
        // the statement itself, so no `ROLLBACK` either.
        let statement = AssertUnwindSafe(CancelOnDrop::new(client, statement, tls, false));
        return match statement.catch_unwind().await {
            Ok(result) => result,
            Err(payload) => {
                // A `ToSql` that panicked left half a message in the
                // client's buffer (tokio-postgres does not clear it): the
                // next request goes out malformed and the server closes the
                // connection. Send it now, so the pool sees a closed
                // connection and never hands this one out.
                let _ = client.batch_execute("").await;
                std::panic::resume_unwind(payload)
            }
        };
    };
    let begin = format!(
        "BEGIN; SET LOCAL statement_timeout = {}",
        crate::statement_timeout::statement_timeout_ms(remaining)
    );
    // Disarmed as soon as the statement itself is done: a cancel sent while
    // only `COMMIT` is outstanding could roll back a write that succeeded.
    // A `ToSql` that panics while the statement is encoded is caught here
    // and raised again below, once `COMMIT` has been sent: unwinding out of
    // this first poll would leave the transaction open.
    let statement =
        AssertUnwindSafe(CancelOnDrop::new(client, statement, tls, true)).catch_unwind();
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
    let value = value.unwrap_or_else(|panic| resume_unwind(panic));
    // A failed `BEGIN` explains a failed statement, so it comes first.
    begun?;
    let value = value?;
    committed?;
    Ok(value)
}

pin_project! {
    /// The statement's request, cancelled on the server when dropped after
    /// it was sent and before its result arrived.
    ///
    /// Armed while the statement is sent and unanswered: from a first poll
    /// that returned `Pending` until a poll returns `Ready`. The statement
    /// is polled here, so that `Drop` can look at it once more.
    struct CancelOnDrop<'a, F, M>
    where
        F: Future,
        M: MakeTlsConnect<Socket>,
        M: Send,
        M: Sync,
        M: 'static,
        M::Stream: Send,
        M::Stream: Sync,
        M::TlsConnect: Send,
        M::TlsConnect: Sync,
        <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        #[pin]
        statement: F,
        client: &'a Client,
        // Taken by the drop that cancels; `Option` so `Drop` can move it.
        tls: Option<M>,
        // Inside the helper's transaction: a cancel is followed by `ROLLBACK`.
        in_transaction: bool,
        armed: bool,
    }

    impl<'a, F, M> PinnedDrop for CancelOnDrop<'a, F, M>
    where
        F: Future,
        M: MakeTlsConnect<Socket>,
        M: Send,
        M: Sync,
        M: 'static,
        M::Stream: Send,
        M::Stream: Sync,
        M::TlsConnect: Send,
        M::TlsConnect: Sync,
        <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !std::mem::take(this.armed) {
                return;
            }
            // The statement may have finished on the server while nobody
            // polled this future (a stream feeding a slow client, a parked
            // cache load). If its answer is already buffered by the
            // connection task, this poll sees it: nothing to cancel, and a
            // cancel sent now would hit whatever the backend runs next.
            let mut cx = Context::from_waker(noop_waker_ref());
            if this.statement.poll(&mut cx).is_ready() {
                return;
            }
            let Some(tls) = this.tls.take() else { return };
            // Outside a runtime there is nowhere to send from; the server-side
            // timeout (with a deadline) still ends the statement. No cancel,
            // so no `ROLLBACK` is needed either.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(
                    "query dropped outside a Tokio runtime: its statement was not cancelled"
                );
                return;
            };
            if *this.in_transaction {
                queue_rollback(this.client, &mut cx);
            }
            let token = this.client.cancel_token();
            // A task of its own: Drop cannot await, and the cancel must go
            // out even though nobody waits for it.
            runtime.spawn(async move {
                if let Err(error) = token.cancel_query(tls).await {
                    tracing::warn!(%error, "could not cancel an abandoned statement");
                }
            });
        }
    }
}

impl<'a, F, M> CancelOnDrop<'a, F, M>
where
    F: Future,
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    /// Guards `statement`, a request on `client` not yet polled;
    /// `in_transaction` when it runs inside the helper's transaction.
    fn new(client: &'a Client, statement: F, tls: M, in_transaction: bool) -> Self {
        Self {
            statement,
            client,
            tls: Some(tls),
            in_transaction,
            armed: false,
        }
    }
}

impl<F, M> Future for CancelOnDrop<'_, F, M>
where
    F: Future,
    M: MakeTlsConnect<Socket> + Send + Sync + 'static,
    M::Stream: Send + Sync,
    M::TlsConnect: Send + Sync,
    <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Disarmed while the statement is polled, so that a poll that
        // panics leaves it disarmed: the panic can only come from a
        // parameter's `ToSql`, while tokio-postgres encodes the request,
        // before anything is sent; and `Drop` must not poll a future that
        // panicked.
        *this.armed = false;
        let poll = this.statement.poll(cx);
        // Pending: the request is sent (tokio-postgres sends it on the first
        // poll) and its answer not yet seen.
        *this.armed = poll.is_pending();
        poll
    }
}

/// Sends `ROLLBACK` on `client` without waiting for it, from `Drop`.
///
/// tokio-postgres sends a request on its future's first poll ("requests are
/// executed in the order that they are first polled", its crate docs;
/// `batch_execute` hands the encoded query to the connection task before
/// its first await), so one poll queues it and dropping the future only
/// discards the answer. It follows the helper's `COMMIT`, sent on the first
/// poll of the join, and precedes whatever the connection's next user
/// sends: a pool gets the connection back only after this future is gone.
fn queue_rollback(client: &Client, cx: &mut Context<'_>) {
    let rollback = pin!(client.batch_execute("ROLLBACK"));
    // Pending, its answer not yet in; or an error when the connection is
    // closed, and there is then no transaction to close.
    let _ = rollback.poll(cx);
}
