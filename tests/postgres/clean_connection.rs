//! After every way a statement run through `fanout::postgres` can end, the
//! same connection comes back clean (issue 9, item 5): `statement_timeout`
//! at its default, no transaction open, and the next statement runs in full
//! instead of being cancelled by a leftover timeout. Each test uses one
//! connection, so a leak would reach the checks.
//!
//! The errors raised before the statement is sent (wrong parameter count,
//! wrong parameter type) are the ones that leaked with the earlier
//! `SET` · statement · `RESET` pipeline.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use fanout::{QueryContext, TenantId};
use futures_util::FutureExt;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::private::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// The deadline of the failing calls: short, so that a leaked
/// `statement_timeout` (75 ms with the grace) cancels the check's statement.
const SHORT: Duration = Duration::from_millis(50);

fn ctx(deadline_in: Duration) -> QueryContext {
    let deadline = tokio::time::Instant::now() + deadline_in;
    QueryContext::new(TenantId::new("t1").unwrap(), Some(deadline))
}

async fn client(application: &str) -> Client {
    crate::connect(&crate::seeded(application).await).await
}

/// Fails the test unless `client` is clean; `after` names what just failed.
pub async fn assert_clean(client: &Client, after: &str) {
    // Longer than any timeout the failed call set: a leftover cancels it.
    let row = client
        .query_one("SELECT 42 FROM pg_sleep(0.2)", &[])
        .await
        .unwrap_or_else(|e| panic!("after {after}: the next statement failed: {e:?}"));
    assert_eq!(row.get::<_, i32>(0), 42, "after {after}");
    let setting: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "0", "after {after}: statement_timeout left set");
    // Inside a transaction, now() is when it began, before this statement.
    // The simple protocol: with the extended one, Bind and Execute stamp
    // the statement separately and the two always differ.
    let outside = client
        .simple_query("SELECT now() = statement_timestamp()")
        .await
        .unwrap();
    let outside = outside.iter().any(|message| {
        matches!(message, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("t"))
    });
    assert!(outside, "after {after}: a transaction is still open");
}

#[tokio::test]
async fn clean_after_a_wrong_parameter_count() {
    let client = client("fanout-test-clean-count").await;
    let statement = client.prepare("SELECT $1::int4").await.unwrap();
    let error = fanout::postgres::query(&client, &ctx(SHORT), &statement, &[])
        .await
        .unwrap_err();
    assert!(
        error.as_db_error().is_none(),
        "failed in the client: {error}"
    );
    assert_clean(&client, "a wrong parameter count").await;
}

#[tokio::test]
async fn clean_after_a_parameter_of_the_wrong_type() {
    let client = client("fanout-test-clean-type").await;
    let statement = client.prepare("SELECT $1::int4").await.unwrap();
    // An i64 for an int4: refused while encoding, before anything is sent.
    let error = fanout::postgres::query_one(&client, &ctx(SHORT), &statement, &[&1_i64])
        .await
        .unwrap_err();
    assert!(
        error.as_db_error().is_none(),
        "failed in the client: {error}"
    );
    assert_clean(&client, "a parameter of the wrong type").await;
}

/// A parameter whose encoding panics: tokio-postgres calls it on the
/// statement's first poll, after `BEGIN; SET LOCAL` went out.
#[derive(Debug)]
struct Explodes;

impl ToSql for Explodes {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        panic!("to_sql exploded")
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// tokio-postgres 0.7 leaves the partly encoded `Bind` in the client's
/// shared write buffer when a `ToSql` panics, so the next request on that
/// client goes out malformed and the server closes the connection. The
/// helper's `COMMIT` is that request: the transaction ends at once (the
/// server rolls it back) instead of the connection waiting, idle in a
/// transaction, for its next user; and a pool replaces the dead connection.
#[tokio::test]
async fn no_transaction_left_after_a_parameter_that_panics() {
    const APP: &str = "fanout-test-clean-panic";
    let config = crate::seeded(APP).await;
    let monitor = crate::connect(&crate::seeded("fanout-test-clean-panic-monitor").await).await;
    let pool = crate::pool(config, 1, Duration::from_secs(5));
    let client = pool.get().await.unwrap();
    let statement = client.prepare_cached("SELECT $1::int4").await.unwrap();
    let panicked = AssertUnwindSafe(fanout::postgres::query(
        &client,
        &ctx(SHORT),
        &statement,
        &[&Explodes],
    ))
    .catch_unwind()
    .await;
    let payload = panicked.expect_err("the parameter's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"to_sql exploded"));

    // On the server: no backend of ours left inside a transaction.
    let started = Instant::now();
    loop {
        let open: i64 = monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                &[&APP],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the connection stayed idle in a transaction"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // On this client: clean, or closed (see above); never in a transaction.
    match client.simple_query("SELECT 1").await {
        Ok(_) => assert_clean(&client, "a parameter that panicked").await,
        Err(e) => assert!(e.is_closed(), "{e:?}"),
    }
    drop(client);
    // The pool's next connection runs the next statement correctly.
    let client = pool.get().await.unwrap();
    let statement = client.prepare_cached("SELECT $1::int4").await.unwrap();
    let row = client
        .query_one(&statement, &[&41_i32])
        .await
        .unwrap_or_else(|e| panic!("the next statement failed: {e:?}"));
    assert_eq!(row.get::<_, i32>(0), 41);
    assert_clean(&client, "a parameter that panicked, next checkout").await;
}

#[tokio::test]
async fn a_parameter_that_panics_without_a_deadline_closes_the_connection() {
    // No deadline: no transaction of ours, but tokio-postgres keeps the
    // half-encoded message in the client's buffer after the panic. The
    // helper flushes it so the server closes the connection at once, and
    // the pool never hands out a connection whose next request is garbage.
    let pool = crate::pool(
        crate::seeded("fanout-test-clean-panic-no-deadline").await,
        1,
        Duration::from_secs(5),
    );
    let client = pool.get().await.unwrap();
    let statement = client.prepare_cached("SELECT $1::int4").await.unwrap();
    let no_deadline = QueryContext::new(fanout::TenantId::new("t1").unwrap(), None);
    let panicked = AssertUnwindSafe(fanout::postgres::query(
        &client,
        &no_deadline,
        &statement,
        &[&Explodes],
    ))
    .catch_unwind()
    .await;
    let payload = panicked.expect_err("the parameter's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"to_sql exploded"));
    assert!(client.is_closed(), "the poisoned connection is closed");
    drop(client);
    let client = pool.get().await.unwrap();
    let statement = client.prepare_cached("SELECT $1::int4").await.unwrap();
    let row = client.query_one(&statement, &[&41_i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 41);
}

#[tokio::test]
async fn clean_after_a_statement_error() {
    let client = client("fanout-test-clean-error").await;
    let statement = client.prepare("SELECT 1 / $1::int4").await.unwrap();
    let error = fanout::postgres::query(&client, &ctx(SHORT), &statement, &[&0_i32])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::DIVISION_BY_ZERO), "{error:?}");
    assert_clean(&client, "division by zero").await;
}

#[tokio::test]
async fn clean_after_the_statement_timeout() {
    let client = client("fanout-test-clean-timeout").await;
    let statement = client.prepare("SELECT pg_sleep(5)").await.unwrap();
    let error = fanout::postgres::query(&client, &ctx(SHORT), &statement, &[])
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    assert_clean(&client, "the statement timeout").await;
}

#[tokio::test]
async fn clean_and_free_after_a_drop_mid_statement() {
    let client = client("fanout-test-clean-drop").await;
    let statement = client.prepare("SELECT pg_sleep(5)").await.unwrap();
    let started = Instant::now();
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        fanout::postgres::query(&client, &ctx(Duration::from_secs(10)), &statement, &[]),
    )
    .await;
    assert!(dropped.is_err(), "still running when dropped");
    assert_clean(&client, "a drop mid-statement").await;
    // Cancelled, not run out: pg_sleep(5) would keep the checks waiting 5 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "the dropped statement ran on: the checks took {elapsed:?}"
    );
}

#[tokio::test]
async fn clean_after_success() {
    let client = client("fanout-test-clean-ok").await;
    let statement = client.prepare("SELECT $1::int4 + 1").await.unwrap();
    let row = fanout::postgres::query_one(
        &client,
        &ctx(Duration::from_secs(5)),
        &statement,
        &[&41_i32],
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_clean(&client, "a statement that succeeded").await;
}
