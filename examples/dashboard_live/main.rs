//! Live dashboards on PostgreSQL: payments committed by one connection
//! reach every subscriber of the tenant through `NOTIFY`, `fanout::live`'s
//! change feed and one refresh per tenant.
//!
//! ```sh
//! cargo run --example dashboard_live --features live               # watch a tenant's dashboard move
//! cargo run --release --example dashboard_live --features live -- --bench
//! ```
//!
//! Without `--bench`: subscribes to one tenant's six widgets and commits a
//! payment (and now and then an invoice falling overdue) every half second
//! for `--seconds`, printing each update as it arrives.
//!
//! `--bench`: commit-to-update latency with 1 and 1000 subscribers, the
//! database refreshes a burst of payments costs against the number of
//! subscribers, and the memory a subscription holds.

#[path = "../dashboard/db.rs"]
mod db;
#[allow(dead_code)] // the widget flag is the other examples'
#[path = "../dashboard/flags.rs"]
mod flags;
#[path = "../dashboard/seed.rs"]
mod seed;
#[allow(dead_code)] // the widget modes are the other examples'
#[path = "../dashboard/setup.rs"]
mod setup;
#[path = "../dashboard/sql.rs"]
#[allow(dead_code)] // the views' SQL is the dashboard example's
mod sql;
#[path = "../dashboard/stats.rs"]
#[allow(dead_code)]
mod stats;
#[allow(dead_code)] // shared with the dashboard example and the tests
#[path = "../dashboard/widgets.rs"]
mod widgets;
#[path = "../dashboard/writer.rs"]
mod writer;

mod bench;
mod counted;

use std::process::ExitCode;
use std::time::Duration;

use fanout::dynamic::WidgetRegistry;
use fanout::live::{ChangeFeed, FeedHandle, Live, Update};
use fanout::{FairLimiter, FanOut, TenantId};
use tokio_postgres::Config;

use counted::Counted;
use widgets::Mode;

/// The schema the example creates its tables in.
const SCHEMA: &str = "fanout_demo";
/// The channel `notify.sql`'s triggers notify.
const CHANNEL: &str = "fanout_changes";
const NOTIFY_SQL: &str = include_str!("../dashboard/notify.sql");

const USAGE: &str = "\
usage: cargo run --example dashboard_live --features live -- [options]

Subscribes to a tenant's live dashboard and commits payments for it, printing
each update; or, with --bench, measures commit-to-update latency, refreshes per
burst and memory per subscriber. Uses DATABASE_URL when set, else a throw-away
PostgreSQL; seeds the schema fanout_demo once.

options:
  --tenant ID     the tenant to watch (default tenant-0001)
  --seconds S     how long to write payments (default 10)
  --bench         measure instead of watching
  -h, --help      this text";

struct Args {
    tenant: String,
    seconds: u64,
    bench: bool,
}

fn parse() -> Result<Option<Args>, String> {
    use lexopt::prelude::*;
    let mut args = Args {
        tenant: seed::tenant_id(1),
        seconds: 10,
        bench: false,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("tenant") => args.tenant = flags::text(&mut parser, "--tenant")?,
            Long("seconds") => args.seconds = flags::positive(&mut parser, "--seconds")?,
            Long("bench") => args.bench = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(format!("{}; see --help", arg.unexpected())),
        }
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
            eprintln!("dashboard_live: {message}");
            return ExitCode::from(2);
        }
    };
    let level = if args.bench {
        tracing::Level::ERROR
    } else {
        tracing::Level::WARN
    };
    setup::run_main("dashboard_live", level, run(args), || Ok(()))
}

/// The six widgets, each counting its runs, on a pool of `pool` connections.
pub struct Service {
    pub live: Live,
    pub runs: counted::Runs,
    pub feed: FeedHandle,
}

async fn service(config: &Config, pool_size: usize) -> Result<Service, String> {
    let pool = db::pool(config.clone(), pool_size, Duration::from_secs(2))?;
    let runs = counted::Runs::default();
    let (a, b, c, d, e, f) = widgets::dashboard(&pool, |_| Mode::Normal);
    let mut registry = WidgetRegistry::new();
    registry
        .register(Counted::new(a, &runs))
        .and_then(|r| r.register(Counted::new(b, &runs)))
        .and_then(|r| r.register(Counted::new(c, &runs)))
        .and_then(|r| r.register(Counted::new(d, &runs)))
        .and_then(|r| r.register(Counted::new(e, &runs)))
        .and_then(|r| r.register(Counted::new(f, &runs)))
        .map_err(|e| e.to_string())?;
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(3))
        .fair_limiter(FairLimiter::new(pool_size));
    let live = Live::builder(fan_out, registry).build();
    let mut feed_config = config.clone();
    feed_config.application_name("fanout-live-feed");
    let feed = ChangeFeed::new(feed_config, CHANNEL)
        .map_err(|e| e.to_string())?
        .spawn(&live)
        .map_err(|e| e.to_string())?;
    let started = tokio::time::Instant::now();
    while !feed.is_listening() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the change feed did not start listening within 10 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Service { live, runs, feed })
}

async fn run(args: Args) -> Result<(), String> {
    let tenant = TenantId::new(&args.tenant).map_err(|e| format!("--tenant: {e}"))?;
    let database = setup::database(SCHEMA, 20).await?;
    let mut client = db::connect(&database.config).await?;
    client
        .batch_execute(NOTIFY_SQL)
        .await
        .map_err(|e| seed::describe(&e))?;
    if client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant.as_str()])
        .await
        .map_err(|e| seed::describe(&e))?
        .is_none()
    {
        return Err(format!("--tenant {tenant} is not in the seed"));
    }
    if args.bench {
        return bench::run(&database.config, &mut client, &tenant).await;
    }

    let service = service(&database.config, 4).await?;
    let mut page = service
        .live
        .subscribe(&tenant, widgets::NAMES)
        .map_err(|e| e.to_string())?;
    let printer = tokio::spawn(async move {
        loop {
            print_update(&page.next().await);
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for n in 0..args.seconds * 2 {
        tick.tick().await;
        if n % 5 == 4 {
            writer::fall_overdue(&client, &tenant).await?;
        } else {
            writer::pay(&mut client, &tenant, 5_000 + 1_000 * (n as i64 % 7)).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    printer.abort();
    println!(
        "{} database queries for {} writes",
        service.runs.total(),
        args.seconds * 2
    );
    Ok(())
}

fn print_update(update: &Update) {
    let widgets: Vec<String> = update
        .widgets()
        .iter()
        .map(|w| {
            let value = w.value.to_string();
            let value = if value.len() > 40 {
                format!("{}…", &value[..40])
            } else {
                value
            };
            format!("{}={} ({})", w.name, value, w.source)
        })
        .collect();
    match update {
        Update::Event { event, .. } => println!("{:<24} {}", update.kind(), event.data),
        _ => println!("{:<24} {}", update.kind(), widgets.join("  ")),
    }
}
