//! The tenant dashboard as an HTTP service: the six widget queries of
//! `examples/dashboard`, fanned out with `fanout` per request and cached,
//! behind bearer JWTs; as JSON, as Server-Sent Events that paint each widget
//! the moment it lands, live over WebSocket and SSE (PostgreSQL `NOTIFY` →
//! `fanout::live`), with a dashboard page at `/` and Prometheus metrics.
//!
//! ```sh
//! cargo run --example dashboard_server --features metrics -- --write-payments tenant-0001
//! # open http://127.0.0.1:3000/ and paste the token it prints; or:
//! TOKEN=$(cat target/dashboard-token)
//! curl -s -H "Authorization: Bearer $TOKEN" localhost:3000/tenants/tenant-0001/dashboard
//! curl -sN "localhost:3000/tenants/tenant-0001/live/events?access_token=$TOKEN"
//! ```
//!
//! `--bench` measures the service from outside (see `bench/mod.rs`): it
//! runs servers as child processes of this binary and drives them with
//! 1000 WebSocket clients and closed-loop JSON clients.
//!
//! ```sh
//! cargo run --release --example dashboard_server --features metrics -- --bench
//! ```
//!
//! With `DATABASE_URL` set it uses that database (in the schema
//! `fanout_demo`, seeded once); otherwise it starts a throw-away PostgreSQL
//! from the server binaries installed on this machine and removes it on
//! exit. Either way it installs the triggers of
//! `examples/dashboard/notify.sql`, so a payment or invoice written by any
//! client reaches the live dashboards.

mod app;
mod auth;
mod bench;
#[path = "../dashboard/db.rs"]
mod db;
mod error;
#[path = "../dashboard/flags.rs"]
mod flags;
#[path = "../dashboard/layers.rs"]
#[allow(dead_code)] // the run counts are the dashboard example's
mod layers;
#[path = "../dashboard/seed.rs"]
mod seed;
#[path = "../dashboard/setup.rs"]
mod setup;
#[path = "../dashboard/sql.rs"]
mod sql;
#[allow(dead_code)] // shared with the other examples' benches
#[path = "../dashboard/stats.rs"]
mod stats;
#[allow(dead_code)] // shared with the dashboard example and the tests
#[path = "../dashboard/widgets.rs"]
mod widgets;
#[allow(dead_code)] // what a write did is the live example's report
#[path = "../dashboard/writer.rs"]
mod writer;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use fanout::TenantId;
use fanout::cache::{CachePolicy, QueryCache};
use fanout::live::ChangeFeed;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;

use flags::{positive, text, widget};

/// The schema the example creates its tables in.
const SCHEMA: &str = "fanout_demo";
/// The channel the triggers of notify.sql notify.
const CHANNEL: &str = "fanout_changes";
const NOTIFY_SQL: &str = include_str!("../dashboard/notify.sql");
const TOKEN_FILE: &str = "target/dashboard-token";

const USAGE: &str = "\
usage: cargo run --example dashboard_server --features metrics -- [options]

Serves the six-widget tenant dashboard over HTTP on 127.0.0.1:
  GET /                                the dashboard page (sign in with a token)
  GET /tenants/{id}/dashboard          every widget as one JSON document
  GET /tenants/{id}/dashboard/stream   Server-Sent Events: one `widget` event each, then `done`
  GET /tenants/{id}/live               WebSocket: a snapshot, then live updates and events
  GET /tenants/{id}/live/events        the same as Server-Sent Events (Last-Event-ID resumes)
  GET /metrics                         Prometheus text
Dashboard routes need `Authorization: Bearer <JWT>` whose `tenant` claim is
the path's tenant (the live routes also take ?access_token=). They take
?widgets=a,b,c; the JSON routes also ?deadline_ms=N. Uses DATABASE_URL when
set, else a throw-away PostgreSQL; seeds the schema fanout_demo once.

options:
  --port N               port to listen on (default 3000)
  --jwt-secret S         the HS256 secret (default: DASHBOARD_JWT_SECRET, else a random
                         development secret); a development token is printed and written
                         to target/dashboard-token
  --no-cache             query the database on every request
  --redis URL            share the cache through Redis (build with --features metrics,redis)
  --max-connections N    open live connections at most (default 1000)
  --write-payments ID    commit a payment (now and then an invoice falling overdue) for that
                         tenant every half second, to watch the page move
  --tenants N            tenants to seed, tenant-0001 to tenant-NNNN (default 20)
  --slow-query NAME      that widget's query sleeps on the server past its timeout (repeatable)
  --break-query NAME     that widget's query fails (repeatable)
  --timeout MS           each query's timeout (default 2000)
  --deadline MS          the whole dashboard's deadline, the most ?deadline_ms= gets (default 3000)
  --pool N               connections in the pool, and permits of the shared fair limiter (default 10)
  --bench                measure instead of serving: live WebSocket latency, memory and
                         queries per payment with 1000 and 100 connections, and the JSON
                         route with and without the cache (servers on --port and --port + 1)
  -h, --help             this text

widgets: total_revenue, outstanding, child_count, invoice_stats, recent_payments, arrears";

#[derive(Clone, Debug)]
struct Args {
    port: u16,
    jwt_secret: Option<String>,
    cache: bool,
    redis: Option<String>,
    max_connections: usize,
    write_payments: Option<TenantId>,
    tenants: u32,
    slow: BTreeSet<&'static str>,
    broken: BTreeSet<&'static str>,
    timeout_ms: u64,
    deadline_ms: u64,
    pool: usize,
    bench: bool,
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
    if args.bench {
        // Ctrl-C kills the bench's servers and removes its database.
        return setup::run_main(
            "dashboard_server --bench",
            tracing::Level::ERROR,
            bench::run(args.port),
            || Ok(()),
        );
    }
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
    let (secret, development) = secret(args.jwt_secret.as_deref())?;
    let auth = auth::Auth::new(&secret);
    let caching = caching(&args).await?;

    // Held to the end: dropping it stops and deletes a throw-away server.
    let database = setup::database(SCHEMA, args.tenants).await?;
    let mut client = db::connect(&database.config).await?;
    client
        .batch_execute(NOTIFY_SQL)
        .await
        .map_err(|e| format!("installing the change triggers: {}", seed::describe(&e)))?;
    let pool = db::pool(database.config.clone(), args.pool, Duration::from_secs(5))?;

    let limits = app::Limits {
        timeout: Duration::from_millis(args.timeout_ms),
        deadline: Duration::from_millis(args.deadline_ms),
        standing_queue: Some((Duration::from_millis(20), Duration::from_millis(100))),
    };
    let mode = setup::modes(&args.slow, &args.broken);
    let options = app::Options {
        auth,
        caching,
        max_connections: args.max_connections,
        ping_every: Duration::from_secs(30),
    };
    let state = Arc::new(app::AppState::new(pool, limits, mode, metrics, options));
    // Every instance listens: several stay in step through PostgreSQL.
    let mut feed_config = database.config.clone();
    feed_config.application_name("fanout-dashboard-feed");
    let _feed = ChangeFeed::new(feed_config, CHANNEL)
        .map_err(|e| e.to_string())?
        .spawn(state.live())
        .map_err(|e| e.to_string())?;
    if let Some(tenant) = args.write_payments.clone() {
        tokio::spawn(async move {
            if let Err(error) = write_payments(&mut client, &tenant).await {
                eprintln!("dashboard_server: --write-payments stopped: {error}");
            }
        });
    }

    let tenant = seed::tenant_id(1);
    let token = state_token(&secret, &tenant);
    let base = format!("http://{address}");
    println!(
        "dashboard_server: listening on {base} (timeout {} ms per query, deadline {} ms, pool {}, cache {}); tenants {} to {}",
        args.timeout_ms,
        args.deadline_ms,
        args.pool,
        if args.cache { "on" } else { "off" },
        tenant,
        seed::tenant_id(args.tenants),
    );
    if development {
        println!(
            "  no --jwt-secret or DASHBOARD_JWT_SECRET: a random development secret signs this process's tokens"
        );
    }
    match std::fs::create_dir_all("target").and_then(|()| std::fs::write(TOKEN_FILE, &token)) {
        Ok(()) => println!("  a development token for {tenant} (24 h), also in {TOKEN_FILE}:"),
        Err(_) => println!("  a development token for {tenant} (24 h):"),
    }
    println!("  {token}");
    println!("  open {base}/ and paste it, or:");
    println!(
        "  curl -s -H \"Authorization: Bearer $(cat {TOKEN_FILE})\" {base}/tenants/{tenant}/dashboard"
    );
    // Each live message is written as soon as it is ready: with Nagle's
    // algorithm, a widget update sent right behind an event waits for the
    // client's (delayed, up to 40 ms) acknowledgement of the event.
    let listener = listener.tap_io(|socket| {
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app::router(state))
        .await
        .map_err(|e| format!("serving: {e}"))
}

fn state_token(secret: &[u8], tenant: &str) -> String {
    auth::Auth::new(secret).token("developer", tenant, Duration::from_secs(24 * 3600))
}

/// The signing secret: the flag, the environment, or a random one for
/// this process (and whether it is that development one).
fn secret(flag: Option<&str>) -> Result<(Vec<u8>, bool), String> {
    let given = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("DASHBOARD_JWT_SECRET").ok());
    match given {
        Some(secret) if secret.len() < 16 => Err(
            "the JWT secret must be at least 16 bytes (--jwt-secret or DASHBOARD_JWT_SECRET)"
                .to_owned(),
        ),
        Some(secret) => Ok((secret.into_bytes(), false)),
        None => {
            let mut secret = vec![0; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut secret))
                .map_err(|e| format!("cannot draw a development secret: {e}"))?;
            Ok((secret, true))
        }
    }
}

/// The widgets' cache: in process (30 s TTL, a failed query shows its
/// last good value for 10 min), shared through Redis with `--redis`, none
/// with `--no-cache`.
async fn caching(args: &Args) -> Result<Option<layers::Caching>, String> {
    if !args.cache {
        return Ok(None);
    }
    let policy = CachePolicy::ttl(Duration::from_secs(30)).stale_if_error(Duration::from_secs(600));
    let local = QueryCache::new(100_000);
    match &args.redis {
        None => Ok(Some(layers::Caching::InProcess(local, policy))),
        #[cfg(feature = "redis")]
        Some(url) => {
            let redis = fanout::cache::RedisTier::connect(url, "fanout-dashboard")
                .await
                .map_err(|e| format!("--redis: {e}"))?;
            let shared = fanout::cache::SharedCache::new(&local, &redis);
            Ok(Some(layers::Caching::Shared(shared, policy)))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(
            "--redis needs the redis feature: cargo run --example dashboard_server --features metrics,redis -- --redis URL"
                .to_owned(),
        ),
    }
}

/// `--write-payments`: a payment every half second, and every fifth write
/// an invoice falling overdue.
async fn write_payments(
    client: &mut tokio_postgres::Client,
    tenant: &TenantId,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for n in 0u64.. {
        tick.tick().await;
        if n % 5 == 4 {
            writer::fall_overdue(client, tenant).await?;
        } else {
            writer::pay(client, tenant, 2_500 + 500 * (n % 9) as i64).await?;
        }
    }
    Ok(())
}

/// The command line; `None` for `--help`.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut parsed = Args {
        port: 3000,
        jwt_secret: None,
        cache: true,
        redis: None,
        max_connections: 1000,
        write_payments: None,
        tenants: 20,
        slow: BTreeSet::new(),
        broken: BTreeSet::new(),
        timeout_ms: 2000,
        deadline_ms: 3000,
        pool: 10,
        bench: false,
    };
    // Flags other than --port and --bench, which --bench does not take.
    let mut serving = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        if let Long(flag) = arg
            && !matches!(flag, "port" | "bench" | "help")
        {
            serving = Some(format!("--{flag}"));
        }
        match arg {
            Long("port") => parsed.port = positive(&mut parser, "--port")?,
            Long("jwt-secret") => parsed.jwt_secret = Some(text(&mut parser, "--jwt-secret")?),
            Long("no-cache") => parsed.cache = false,
            Long("redis") => parsed.redis = Some(text(&mut parser, "--redis")?),
            Long("max-connections") => {
                parsed.max_connections = positive(&mut parser, "--max-connections")?;
            }
            Long("write-payments") => {
                let id = text(&mut parser, "--write-payments")?;
                parsed.write_payments =
                    Some(TenantId::new(&id).map_err(|e| format!("--write-payments: {e}"))?);
            }
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
            Long("bench") => parsed.bench = true,
            Short('h') | Long("help") => return Ok(None),
            other => return Err(format!("{}; see --help", other.unexpected())),
        }
    }
    if let Some(flag) = serving.filter(|_| parsed.bench) {
        return Err(format!(
            "--bench starts its own servers and takes only --port, not {flag}"
        ));
    }
    if let Some(both) = parsed.slow.intersection(&parsed.broken).next() {
        return Err(format!(
            "{both} is both --slow-query and --break-query; pick one"
        ));
    }
    if parsed.redis.is_some() && !parsed.cache {
        return Err("--redis shares the cache, and --no-cache turns it off; pick one".to_owned());
    }
    Ok(Some(parsed))
}
