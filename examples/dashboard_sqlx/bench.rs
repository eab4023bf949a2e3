//! `--bench`: what one query costs through plain sqlx, through
//! `fanout::sqlx`, through the cheaper orders the helper could have used,
//! and through tokio-postgres with and without `fanout::postgres`: on a
//! pool of one (each variant's own), `SELECT 1` and a real widget, the
//! variants taking turns so that all of them see the same machine.

use std::time::{Duration, Instant};

use fanout::{QueryContext, TenantId};
use sqlx::{Executor, PgPool};

use crate::stats::{self, Samples};
use crate::{db, sql, sqlx_db};

/// The variants, in the order they are printed.
const VARIANTS: [&str; 8] = [
    "sqlx, plain",
    "sqlx, fanout::sqlx::fetch_all",
    "sqlx, BEGIN; SET LOCAL · statement · COMMIT (inline, no task)",
    "sqlx, the same with SELECT pg_backend_pid() in the batch (inline, no task)",
    "sqlx, Pool::begin · set_config(.., true) · statement · commit",
    "sqlx, SET · statement · RESET (session)",
    "tokio-postgres, plain",
    "tokio-postgres, fanout::postgres::query",
];

pub async fn run(
    config: &tokio_postgres::Config,
    _warm: &PgPool,
    tenant: &TenantId,
    samples: usize,
) -> Result<(), String> {
    let options = sqlx_db::options(config, crate::SCHEMA, "fanout-dashboard-sqlx-bench")?;
    let pool = sqlx_db::pool(options, 1, Duration::from_secs(5));
    let deadpool = db::pool(config.clone(), 1, Duration::from_secs(5))?;
    let widget = sql::named(sql::QUERIES, "invoice_stats").ok_or("no invoice_stats")?;
    println!(
        "per-query cost, pool of one each, {samples} samples of each variant taking turns (medians; ratio to plain sqlx)\n"
    );
    for (label, sql, n) in [
        ("SELECT 1", "SELECT 1", samples),
        ("widget invoice_stats", widget, samples / 4),
    ] {
        let mut all = vec![Samples::default(); VARIANTS.len()];
        // One untimed round fills the pools and prepares the statements.
        for round in 0..=n {
            for (variant, samples) in all.iter_mut().enumerate() {
                let started = Instant::now();
                one(variant, &pool, &deadpool, tenant, sql)
                    .await
                    .map_err(|e| format!("{}: {e}", VARIANTS[variant]))?;
                if round > 0 {
                    samples.push(started.elapsed());
                }
            }
        }
        println!("| {label} | median | ratio |\n|---|---:|---:|");
        let plain = all[0].p(50);
        for (name, samples) in VARIANTS.iter().zip(&all) {
            println!(
                "| {name} | {} | {:.2}x |",
                stats::ms(samples.p(50)),
                stats::ratio(samples.p(50), plain)
            );
        }
        println!();
    }
    Ok(())
}

/// A context with 2 s left: `statement_timeout = 2025` for the helpers.
fn ctx(tenant: &TenantId) -> QueryContext {
    QueryContext::new(
        tenant.clone(),
        Some(tokio::time::Instant::now() + Duration::from_secs(2)),
    )
}

/// Runs `sql` (`SELECT 1`, or a widget taking the tenant as `$1`) once,
/// the way `variant` says.
async fn one(
    variant: usize,
    pool: &PgPool,
    deadpool: &deadpool_postgres::Pool,
    tenant: &TenantId,
    sql: &str,
) -> Result<usize, String> {
    let e = |e: sqlx::Error| e.to_string();
    let query = || {
        let query = sqlx::query(sql);
        if sql.contains("$1") {
            query.bind(tenant.as_str())
        } else {
            query
        }
    };
    let rows = match variant {
        0 => query().fetch_all(pool).await.map_err(e)?.len(),
        1 => fanout::sqlx::fetch_all(pool, &ctx(tenant), query())
            .await
            .map_err(e)?
            .len(),
        2 => {
            let mut conn = pool.acquire().await.map_err(e)?;
            conn.execute("BEGIN; SET LOCAL statement_timeout = 2025")
                .await
                .map_err(e)?;
            let rows = query().fetch_all(&mut *conn).await.map_err(e)?.len();
            conn.execute("COMMIT").await.map_err(e)?;
            rows
        }
        3 => {
            let mut conn = pool.acquire().await.map_err(e)?;
            let pid: i32 =
                sqlx::raw_sql("BEGIN; SET LOCAL statement_timeout = 2025; SELECT pg_backend_pid()")
                    .fetch_one(&mut *conn)
                    .await
                    .and_then(|row| sqlx::Row::try_get(&row, 0))
                    .map_err(e)?;
            let rows = query().fetch_all(&mut *conn).await.map_err(e)?.len();
            conn.execute("COMMIT").await.map_err(e)?;
            rows + usize::from(pid == 0)
        }
        4 => {
            let mut tx = pool.begin().await.map_err(e)?;
            sqlx::query("SELECT set_config('statement_timeout', $1, true)")
                .bind("2025")
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            let rows = query().fetch_all(&mut *tx).await.map_err(e)?.len();
            tx.commit().await.map_err(e)?;
            rows
        }
        5 => {
            let mut conn = pool.acquire().await.map_err(e)?;
            conn.execute("SET statement_timeout = 2025")
                .await
                .map_err(e)?;
            let rows = query().fetch_all(&mut *conn).await.map_err(e)?.len();
            conn.execute("RESET statement_timeout").await.map_err(e)?;
            rows
        }
        _ => {
            let client = deadpool.get().await.map_err(|e| e.to_string())?;
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(|e| e.to_string())?;
            let id = tenant.as_str();
            let with_tenant: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = if sql.contains("$1") {
                &with_tenant
            } else {
                &[]
            };
            let rows = if variant == 6 {
                client.query(&statement, params).await
            } else {
                fanout::postgres::query(&client, &ctx(tenant), &statement, params).await
            };
            rows.map_err(|e| e.to_string())?.len()
        }
    };
    Ok(rows)
}
