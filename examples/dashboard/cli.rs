//! Command-line flags of the dashboard example.

use std::collections::BTreeSet;

use crate::flags::{positive, text, widget};

pub const USAGE: &str = "\
usage: cargo run --example dashboard -- [options]

Runs the six-widget tenant dashboard against PostgreSQL: once with each
widget's value, source and latency, then sequentially and concurrently over
several rounds. Uses DATABASE_URL when set, else a throw-away PostgreSQL.

options:
  --tenants N          tenants to seed (default 20: about 520k invoices, 585k payments)
  --tenant ID          tenant whose dashboard is shown (default tenant-0001)
  --rounds N           rounds of each of sequential and concurrent (default 30; 5 with the flags below)
  --slow-query NAME    that widget's query sleeps on the server past its timeout (repeatable)
  --break-query NAME   that widget's query fails (repeatable)
  --timeout MS         each query's timeout (default 2000)
  --deadline MS        the whole dashboard's deadline (default 3000)
  --pool N             connections in the pool, and permits of the shared limiter (default 10)
  --limiter KIND       fair: permits shared fairly between tenants, shedding what cannot finish
                       in time (the default); fifo: one first-come, first-served semaphore
  --queue-target MS    fair: under a standing queue, how long a dashboard waits for its first
                       permit before it degrades (default 20)
  --queue-interval MS  fair: the longest wait for a first permit, and how long the queue must
                       go without emptying to count as standing (default 100)
  --tenant-cap N       fair: the most permits one tenant holds at once (default: no cap)
  --cache              serve widgets through an in-process cache (TTL, coalescing, stale-if-error)
  --cache-ttl SECS     --cache: how long a value is served (default 30; stale for 10 minutes more)
  --redis URL          --cache: share the cache through Redis (build with --features redis)
  --bench              load mode: sequential vs concurrent vs cached, for a fixed number of dashboards
  --clients C          --bench: concurrent clients (default 32)
  --dashboards N       --bench: dashboards per mode (default 2000)
  --no-views           run the live-only widget queries (queries.sql) instead of the hybrid ones
                       that read closed months from the materialized views (the default)
  --refresh-views SECS refresh the views every SECS seconds in the background (default 300;
                       they are also refreshed once at start)
  --bench-views        load mode: cold (uncached) dashboards with views vs --no-views, alternating;
                       medians and their ratio (--dashboards defaults to 400 here)
  --capacity           load mode: a capacity curve and a noisy neighbour, fifo against fair
  --steady             load mode: the cache under a steady load, TTL only against refresh-ahead
  --seconds S          --capacity: how long each point runs (default 4); --steady: how long
                       each policy runs (default 12)
  -h, --help           this text

widgets: total_revenue, outstanding, child_count, invoice_stats, recent_payments, arrears";

#[derive(Clone, Debug)]
pub struct Args {
    pub tenants: u32,
    pub tenant: String,
    pub rounds: usize,
    pub slow: BTreeSet<&'static str>,
    pub broken: BTreeSet<&'static str>,
    pub timeout_ms: u64,
    pub deadline_ms: u64,
    pub pool: usize,
    pub cache: bool,
    pub cache_ttl_secs: u64,
    pub redis: Option<String>,
    pub bench: bool,
    pub clients: usize,
    pub dashboards: usize,
    pub fair: bool,
    pub queue_target_ms: u64,
    pub queue_interval_ms: u64,
    pub tenant_cap: Option<std::num::NonZeroUsize>,
    pub capacity: bool,
    pub steady: bool,
    pub seconds: Option<u64>,
    pub views: bool,
    pub refresh_views_secs: u64,
    pub bench_views: bool,
}

/// What the command line asked for.
pub enum Parsed {
    Run(Box<Args>),
    Help,
}

pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut rounds = None;
    let mut dashboards = None;
    let mut refresh_views = None;
    let mut parsed = Args {
        tenants: 20,
        tenant: "tenant-0001".to_owned(),
        rounds: 30,
        slow: BTreeSet::new(),
        broken: BTreeSet::new(),
        timeout_ms: 2000,
        deadline_ms: 3000,
        pool: 10,
        cache: false,
        cache_ttl_secs: 30,
        redis: None,
        bench: false,
        clients: 32,
        dashboards: 2000,
        fair: true,
        queue_target_ms: 20,
        queue_interval_ms: 100,
        tenant_cap: None,
        capacity: false,
        steady: false,
        seconds: None,
        views: true,
        refresh_views_secs: 300,
        bench_views: false,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("tenants") => parsed.tenants = positive(&mut parser, "--tenants")?,
            Long("tenant") => parsed.tenant = text(&mut parser, "--tenant")?,
            Long("rounds") => rounds = Some(positive(&mut parser, "--rounds")?),
            Long("slow-query") => {
                parsed.slow.insert(widget(&mut parser, "--slow-query")?);
            }
            Long("break-query") => {
                parsed.broken.insert(widget(&mut parser, "--break-query")?);
            }
            Long("timeout") => parsed.timeout_ms = positive(&mut parser, "--timeout")?,
            Long("deadline") => parsed.deadline_ms = positive(&mut parser, "--deadline")?,
            Long("pool") => parsed.pool = positive(&mut parser, "--pool")?,
            Long("cache") => parsed.cache = true,
            Long("cache-ttl") => parsed.cache_ttl_secs = positive(&mut parser, "--cache-ttl")?,
            Long("redis") => parsed.redis = Some(text(&mut parser, "--redis")?),
            Long("bench") => parsed.bench = true,
            Long("clients") => parsed.clients = positive(&mut parser, "--clients")?,
            Long("dashboards") => dashboards = Some(positive(&mut parser, "--dashboards")?),
            Long("limiter") => {
                parsed.fair = match text(&mut parser, "--limiter")?.as_str() {
                    "fair" => true,
                    "fifo" => false,
                    other => return Err(format!("--limiter {other}: expected fair or fifo")),
                }
            }
            Long("queue-target") => {
                parsed.queue_target_ms = positive(&mut parser, "--queue-target")?
            }
            Long("queue-interval") => {
                parsed.queue_interval_ms = positive(&mut parser, "--queue-interval")?
            }
            Long("tenant-cap") => {
                parsed.tenant_cap =
                    std::num::NonZeroUsize::new(positive(&mut parser, "--tenant-cap")?)
            }
            Long("capacity") => parsed.capacity = true,
            Long("steady") => parsed.steady = true,
            Long("seconds") => parsed.seconds = Some(positive(&mut parser, "--seconds")?),
            Long("no-views") => parsed.views = false,
            Long("refresh-views") => {
                refresh_views = Some(positive(&mut parser, "--refresh-views")?)
            }
            Long("bench-views") => parsed.bench_views = true,
            Short('h') | Long("help") => return Ok(Parsed::Help),
            other => return Err(format!("{}; see --help", other.unexpected())),
        }
    }
    if let Some(both) = parsed.slow.intersection(&parsed.broken).next() {
        return Err(format!(
            "{both} is both --slow-query and --break-query; pick one"
        ));
    }
    let modes = [
        ("--bench", parsed.bench),
        ("--capacity", parsed.capacity),
        ("--steady", parsed.steady),
        ("--bench-views", parsed.bench_views),
    ];
    let chosen: Vec<&str> = modes.iter().filter(|m| m.1).map(|m| m.0).collect();
    if let [first, second, ..] = chosen[..] {
        return Err(format!("{first} and {second} are two load modes: pick one"));
    }
    if parsed.bench_views && !parsed.views {
        return Err(
            "--bench-views compares views with --no-views itself: drop --no-views".to_owned(),
        );
    }
    if let Some(secs) = refresh_views {
        if !parsed.views {
            return Err(
                "--refresh-views refreshes the views that --no-views leaves unread: pick one"
                    .to_owned(),
            );
        }
        parsed.refresh_views_secs = secs;
    }
    parsed.dashboards = dashboards.unwrap_or(if parsed.bench_views { 400 } else { 2000 });
    if parsed.redis.is_some() && !parsed.cache {
        return Err("--redis shares the cache: add --cache".to_owned());
    }
    let degraded = !parsed.slow.is_empty() || !parsed.broken.is_empty();
    parsed.rounds = rounds.unwrap_or(if degraded { 5 } else { 30 });
    Ok(Parsed::Run(Box::new(parsed)))
}
