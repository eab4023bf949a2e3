//! The tenant dashboard as an HTTP service: the six widget queries of
//! `examples/dashboard`, fanned out with `fanout` per request, as JSON, as
//! Server-Sent Events that paint each widget the moment it lands, and with
//! Prometheus metrics.
//!
//! ```sh
//! cargo run --example dashboard_server --features metrics
//! curl -s localhost:3000/tenants/tenant-0001/dashboard
//! curl -sN localhost:3000/tenants/tenant-0001/dashboard/stream
//! curl -s 'localhost:3000/tenants/tenant-0001/dashboard?widgets=arrears,child_count'
//! curl -s localhost:3000/metrics
//! cargo run --example dashboard_server --features metrics -- --slow-query arrears --timeout 300
//! ```
//!
//! With `DATABASE_URL` set it uses that database (in the schema
//! `fanout_demo`, seeded once); otherwise it starts a throw-away PostgreSQL
//! from the server binaries installed on this machine and removes it on
//! exit.

mod app;
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
#[allow(dead_code)] // shared with the dashboard example and the tests
#[path = "../dashboard/widgets.rs"]
mod widgets;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;

use flags::{positive, widget};

/// The schema the example creates its tables in.
const SCHEMA: &str = "fanout_demo";

const USAGE: &str = "\
usage: cargo run --example dashboard_server --features metrics -- [options]

Serves the six-widget tenant dashboard over HTTP on 127.0.0.1:
  GET /tenants/{id}/dashboard          every widget as one JSON document
  GET /tenants/{id}/dashboard/stream   Server-Sent Events: one `widget` event each, then `done`
  GET /metrics                         Prometheus text
Both dashboard routes take ?widgets=a,b,c. Uses DATABASE_URL when set, else a
throw-away PostgreSQL; seeds the schema fanout_demo once.

options:
  --port N             port to listen on (default 3000)
  --tenants N          tenants to seed, tenant-0001 to tenant-NNNN (default 20)
  --slow-query NAME    that widget's query sleeps on the server past its timeout (repeatable)
  --break-query NAME   that widget's query fails (repeatable)
  --timeout MS         each query's timeout (default 2000)
  --deadline MS        the whole dashboard's deadline (default 3000)
  --pool N             connections in the pool, and permits of the shared fair limiter (default 10)
  -h, --help           this text

widgets: total_revenue, outstanding, child_count, invoice_stats, recent_payments, arrears";

#[derive(Clone, Debug)]
struct Args {
    port: u16,
    tenants: u32,
    slow: BTreeSet<&'static str>,
    broken: BTreeSet<&'static str>,
    timeout_ms: u64,
    deadline_ms: u64,
    pool: usize,
}

fn main() -> ExitCode {
    let args = match parse(std::env::args_os().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dashboard_server: {message}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C stops the server, and with it a throw-away PostgreSQL.
    setup::run_main(
        "dashboard_server",
        tracing::Level::WARN,
        serve(args),
        || {
            eprintln!("dashboard_server: stopped");
            Ok(())
        },
    )
}

async fn serve(args: Args) -> Result<(), String> {
    // Before anything slow: a port in use is the likeliest mistake.
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        // The recorder's histograms need draining now and then.
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    // Held to the end: dropping it stops and deletes a throw-away server.
    let database = setup::database(SCHEMA, args.tenants).await?;
    let pool = db::pool(database.config.clone(), args.pool, Duration::from_secs(5))?;

    let limits = app::Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        deadline: Duration::from_millis(args.deadline_ms),
        standing_queue: Some((Duration::from_millis(20), Duration::from_millis(100))),
    };
    let mode = setup::modes(&args.slow, &args.broken);
    let router = app::router(app::AppState::new(pool, limits, mode, metrics));

    let base = format!("http://{address}");
    println!(
        "dashboard_server: listening on {base} (timeout {} ms per query, deadline {} ms, pool {}); tenants {} to {}",
        args.timeout_ms,
        args.deadline_ms,
        args.pool,
        seed::tenant_id(1),
        seed::tenant_id(args.tenants),
    );
    println!("  curl -s {base}/tenants/tenant-0001/dashboard");
    println!("  curl -sN {base}/tenants/tenant-0001/dashboard/stream");
    println!("  curl -s {base}/metrics");
    axum::serve(listener, router)
        .await
        .map_err(|e| format!("serving: {e}"))
}

/// The command line; `None` for `--help`.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut parsed = Args {
        port: 3000,
        tenants: 20,
        slow: BTreeSet::new(),
        broken: BTreeSet::new(),
        timeout_ms: 2000,
        deadline_ms: 3000,
        pool: 10,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("port") => parsed.port = positive(&mut parser, "--port")?,
            Long("tenants") => parsed.tenants = positive(&mut parser, "--tenants")?,
            Long("slow-query") => {
                parsed.slow.insert(widget(&mut parser, "--slow-query")?);
            }
            Long("break-query") => {
                parsed.broken.insert(widget(&mut parser, "--break-query")?);
            }
            Long("timeout") => parsed.timeout_ms = positive(&mut parser, "--timeout")?,
            Long("deadline") => parsed.deadline_ms = positive(&mut parser, "--deadline")?,
            Long("pool") => parsed.pool = positive(&mut parser, "--pool")?,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(format!("{}; see --help", other.unexpected())),
        }
    }
    if let Some(both) = parsed.slow.intersection(&parsed.broken).next() {
        return Err(format!(
            "{both} is both --slow-query and --break-query; pick one"
        ));
    }
    Ok(Some(parsed))
}
