//! The tenant dashboard of `examples/dashboard` on sqlx: the same six
//! widget queries, the same seeded PostgreSQL, each widget a
//! `DashboardQuery` over a `sqlx::PgPool` that runs its query through
//! `fanout::sqlx::fetch_all` (a server-side deadline, and a connection that
//! never goes back to the pool busy or dirty, however the query is
//! dropped).
//!
//! ```sh
//! cargo run --example dashboard_sqlx --features sqlx
//! cargo run --example dashboard_sqlx --features sqlx -- --slow-query arrears --timeout 500
//! cargo run --release --example dashboard_sqlx --features sqlx -- --bench
//! ```
//!
//! `--bench` measures what one query costs through plain sqlx, through
//! `fanout::sqlx`, through the cheaper orders it could have used, and
//! through tokio-postgres with and without `fanout::postgres`
//! (BENCHMARKS.md, "sqlx: what the helper costs").
//!
//! With `DATABASE_URL` set it uses that database (schema `fanout_demo`);
//! otherwise it starts a throw-away PostgreSQL and removes it on exit.

#[path = "../dashboard/db.rs"]
mod db;
#[path = "../dashboard/flags.rs"]
mod flags;
#[path = "../dashboard/seed.rs"]
mod seed;
#[path = "../dashboard/setup.rs"]
mod setup;
#[path = "../dashboard/sql.rs"]
mod sql;
#[allow(dead_code)] // shared with examples/dashboard, which uses all of it
#[path = "../dashboard/stats.rs"]
mod stats;
// The value types and `Mode`; its tokio-postgres widgets are the other
// example's.
#[allow(dead_code)]
#[path = "../dashboard/widgets.rs"]
mod widgets;

mod bench;
mod sqlx_db;
mod sqlx_widgets;

use std::collections::BTreeSet;
use std::fmt::Display;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fanout::{FanOut, Outcome, TenantId};

use flags::{positive, text, widget};

/// The schema the example creates its tables in (shared with
/// `examples/dashboard`: one seed serves both).
const SCHEMA: &str = "fanout_demo";

const USAGE: &str = "\
usage: cargo run --example dashboard_sqlx --features sqlx -- [options]

The six-widget tenant dashboard through sqlx and fanout::sqlx. Uses
DATABASE_URL when set, else a throw-away PostgreSQL.

options:
  --tenant ID          tenant whose dashboard is shown (default tenant-0001)
  --tenants N          tenants to seed (default 20)
  --rounds N           dashboards timed, one after another (default 30)
  --slow-query NAME    that widget's query sleeps on the server past its timeout (repeatable)
  --break-query NAME   that widget's query fails (repeatable)
  --timeout MS         each query's timeout (default 2000)
  --deadline MS        the whole dashboard's deadline (default 3000)
  --bench              per-query cost: plain sqlx, fanout::sqlx, the alternatives, tokio-postgres
  --samples N          --bench: samples of each variant (default 2000)
  -h, --help           this text";

pub struct Args {
    tenant: String,
    tenants: u32,
    rounds: usize,
    slow: BTreeSet<&'static str>,
    broken: BTreeSet<&'static str>,
    timeout_ms: u64,
    deadline_ms: u64,
    bench: bool,
    samples: usize,
}

fn parse() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args {
        tenant: "tenant-0001".to_owned(),
        tenants: 20,
        rounds: 30,
        slow: BTreeSet::new(),
        broken: BTreeSet::new(),
        timeout_ms: 2000,
        deadline_ms: 3000,
        bench: false,
        samples: 2000,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("tenant") => args.tenant = text(&mut parser, "--tenant")?,
            Long("tenants") => args.tenants = positive(&mut parser, "--tenants")?,
            Long("rounds") => args.rounds = positive(&mut parser, "--rounds")?,
            Long("slow-query") => {
                args.slow.insert(widget(&mut parser, "--slow-query")?);
            }
            Long("break-query") => {
                args.broken.insert(widget(&mut parser, "--break-query")?);
            }
            Long("timeout") => args.timeout_ms = positive(&mut parser, "--timeout")?,
            Long("deadline") => args.deadline_ms = positive(&mut parser, "--deadline")?,
            Long("bench") => args.bench = true,
            Long("samples") => args.samples = positive(&mut parser, "--samples")?,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(format!("{}; see --help", other.unexpected())),
        }
    }
    if let Some(both) = args.slow.intersection(&args.broken).next() {
        return Err(format!(
            "{both} is both --slow-query and --break-query; pick one"
        ));
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dashboard_sqlx: {message}");
            return ExitCode::from(2);
        }
    };
    setup::run_main("dashboard_sqlx", tracing::Level::WARN, run(args), || {
        Err("interrupted".to_owned())
    })
}

async fn run(args: Args) -> Result<(), String> {
    let tenant = TenantId::new(&args.tenant).map_err(|e| format!("--tenant: {e}"))?;
    // Held to the end: dropping it stops and deletes a throw-away server.
    let database = setup::database(SCHEMA, args.tenants).await?;
    let options = sqlx_db::options(&database.config, SCHEMA, "fanout-dashboard-sqlx")?;
    let pool = sqlx_db::pool(options, 10, Duration::from_secs(5));
    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tenants WHERE id = $1")
        .bind(tenant.as_str())
        .fetch_optional(&pool)
        .await
        .map_err(|e| format!("cannot query the seeded database: {e}"))?;
    if known.is_none() {
        return Err(format!(
            "--tenant {tenant} is not in the seed: ids run from {} to {}",
            seed::tenant_id(1),
            seed::tenant_id(args.tenants)
        ));
    }
    if args.bench {
        return bench::run(&database.config, &pool, &tenant, args.samples).await;
    }

    let fan_out = FanOut::new()
        .timeout(Duration::from_millis(args.timeout_ms))
        .deadline(Duration::from_millis(args.deadline_ms));
    let dashboard = sqlx_widgets::dashboard(&pool, setup::modes(&args.slow, &args.broken));
    // Fill the pool and prepare the statements before anything is timed.
    fan_out.run(&tenant, sqlx_widgets::refs(&dashboard)).await;

    println!(
        "\ntenant {tenant} over sqlx: one dashboard, six queries at once (timeout {} ms each, deadline {} ms, pool 10)",
        args.timeout_ms, args.deadline_ms
    );
    let started = Instant::now();
    let (revenue, outstanding, children, invoices, payments, arrears) =
        fan_out.run(&tenant, sqlx_widgets::refs(&dashboard)).await;
    let whole = started.elapsed();
    print_widget("total_revenue", &revenue);
    print_widget("outstanding", &outstanding);
    print_widget("child_count", &children);
    print_widget("invoice_stats", &invoices);
    print_widget("recent_payments", &payments);
    print_widget("arrears", &arrears);
    println!(
        "  {:<16} {:<64} {:>10}",
        "whole dashboard",
        "",
        stats::ms(whole)
    );

    let mut samples = stats::Samples::default();
    for _ in 0..args.rounds {
        let started = Instant::now();
        fan_out.run(&tenant, sqlx_widgets::refs(&dashboard)).await;
        samples.push(started.elapsed());
    }
    println!(
        "\n{} dashboards, one after another: p50 {}, p95 {}",
        args.rounds,
        stats::ms(samples.p(50)),
        stats::ms(samples.p(95))
    );
    Ok(())
}

fn print_widget<T: Display>(name: &str, outcome: &Outcome<T>) {
    println!(
        "  {:<16} {:<64} {:>10}  {}",
        name,
        outcome.value.to_string(),
        stats::ms(outcome.elapsed),
        outcome.source
    );
}
