//! After every way a query through `fanout::sqlx` can fail, the pool's only
//! connection comes back clean, or is replaced.

use std::time::Duration;

use fanout::{QueryContext, TenantId};

fn ctx(deadline_in: Option<Duration>) -> QueryContext {
    let deadline = deadline_in.map(|d| tokio::time::Instant::now() + d);
    QueryContext::new(TenantId::new("t1").unwrap(), deadline)
}

fn code(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test]
async fn clean_after_a_statement_error() {
    const APP: &str = "fanout-test-sqlx-clean-error";
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-clean-error-monitor").await;
    let query = sqlx::query("SELECT 1 / $1::int4").bind(0_i32);
    let error = fanout::sqlx::fetch_all(&pool, &ctx(Some(Duration::from_secs(5))), query)
        .await
        .unwrap_err();
    assert_eq!(code(&error).as_deref(), Some("22012"), "{error:?}");
    crate::assert_pool_clean(&pool, 1, &monitor, APP, "division by zero").await;
}

#[tokio::test]
async fn clean_after_the_server_side_deadline() {
    const APP: &str = "fanout-test-sqlx-clean-timeout";
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-clean-timeout-monitor").await;
    // Awaited to the end: the server, not a drop, stops it (50 ms + grace).
    let query = sqlx::query("SELECT pg_sleep(5)");
    let error = fanout::sqlx::fetch_all(&pool, &ctx(Some(Duration::from_millis(50))), query)
        .await
        .unwrap_err();
    assert_eq!(code(&error).as_deref(), Some("57014"), "{error:?}");
    crate::assert_pool_clean(&pool, 1, &monitor, APP, "the statement timeout").await;
}

#[tokio::test]
async fn a_wrong_parameter_count_is_an_error_and_the_pool_stays_clean() {
    const APP: &str = "fanout-test-sqlx-clean-params";
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-clean-params-monitor").await;
    for deadline in [Some(Duration::from_secs(5)), None] {
        let query = sqlx::query("SELECT $1::int4");
        let result = fanout::sqlx::fetch_all(&pool, &ctx(deadline), query).await;
        assert!(result.is_err(), "deadline {deadline:?}: {result:?}");
        crate::assert_pool_clean(&pool, 1, &monitor, APP, "a wrong parameter count").await;
    }
}

#[tokio::test]
async fn a_deadline_already_passed_fails_on_the_server_and_the_pool_stays_clean() {
    const APP: &str = "fanout-test-sqlx-clean-passed";
    let pool = crate::pool(APP, 1, Duration::from_secs(5)).await;
    let monitor = crate::monitor("fanout-test-sqlx-clean-passed-monitor").await;
    let passed = QueryContext::new(
        TenantId::new("t1").unwrap(),
        Some(tokio::time::Instant::now() - Duration::from_secs(1)),
    );
    // statement_timeout = 25 ms (the grace): a 1 s statement cannot finish.
    let query = sqlx::query("SELECT pg_sleep(1)");
    let error = fanout::sqlx::fetch_all(&pool, &passed, query)
        .await
        .unwrap_err();
    assert_eq!(code(&error).as_deref(), Some("57014"), "{error:?}");
    crate::assert_pool_clean(&pool, 1, &monitor, APP, "a deadline already passed").await;
}

/// Outside a Tokio runtime there is nowhere to spawn the task that owns
/// the connection: a typed error, before any connection is checked out.
#[test]
fn outside_a_runtime_is_a_configuration_error_not_a_panic() {
    use futures_util::FutureExt;
    // sqlx builds (and drops) a pool only inside a runtime; the query is
    // then polled outside it, as by another executor.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = {
        let _inside = runtime.enter();
        sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap()
    };
    let ctx = QueryContext::new(TenantId::new("t1").unwrap(), None);
    let query = fanout::sqlx::fetch_all(&pool, &ctx, sqlx::query("SELECT 1"));
    let result = query.now_or_never().expect("answers on its first poll");
    let _inside = runtime.enter();
    drop(pool);
    assert!(
        matches!(&result, Err(sqlx::Error::Configuration(message)) if message.to_string().contains("Tokio runtime")),
        "{result:?}"
    );
}
