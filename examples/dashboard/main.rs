//! The tenant dashboard of a childcare-billing SaaS on a real PostgreSQL:
//! six widget queries fanned out with `fanout`, each with its own timeout
//! and fallback, under an overall deadline and a pool-sized limiter.
//!
//! It seeds a deterministic multi-tenant data set (20 tenants, about 520k
//! invoices and 585k payments, reused on later runs), prints one tenant's
//! widgets with their source and latency, then times the dashboard loaded
//! sequentially and concurrently.
//!
//! ```sh
//! cargo run --example dashboard
//! cargo run --example dashboard -- --slow-query arrears --break-query outstanding
//! cargo run --example dashboard -- --cache --cache-ttl 2 --break-query outstanding
//! cargo run --release --example dashboard -- --bench
//! cargo run --release --example dashboard -- --capacity
//! cargo run --release --example dashboard -- --steady
//! cargo run --example dashboard -- --no-views
//! cargo run --release --example dashboard -- --bench-views
//! ```
//!
//! The widgets that aggregate history (invoice_stats, outstanding,
//! total_revenue) read closed months from two materialized views and the
//! rest live, in one statement (hybrid.sql); the views are refreshed at
//! start and every `--refresh-views` seconds. `--no-views` runs the
//! live-only queries instead: same values.
//!
//! With `DATABASE_URL` set it uses that database (in a schema of its own,
//! `fanout_demo`); otherwise it starts a throw-away PostgreSQL from the
//! server binaries installed on this machine and removes it on exit.

mod bench;
mod bench_views;
mod capacity;
mod cli;
mod db;
mod flags;
mod layers;
mod seed;
mod setup;
mod sql;
mod stats;
mod steady;
mod views;
mod widgets;

use std::fmt::Display;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::cache::{CachePolicy, QueryCache};
use fanout::{FairLimiter, FanOut, Outcome, TenantId};
use tokio::sync::Semaphore;

use cli::{Args, Parsed};
use stats::Samples;
use widgets::{Mode, Queries};

/// The schema the example creates its tables in.
const SCHEMA: &str = "fanout_demo";

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(args)) => *args,
        Ok(Parsed::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("dashboard: {message}");
            return ExitCode::from(2);
        }
    };
    // Degraded widgets log one WARN each: the point of the demo. Under load
    // they would drown the report, so --bench shows errors only.
    let level = if args.bench || args.capacity || args.steady || args.bench_views {
        tracing::Level::ERROR
    } else {
        tracing::Level::WARN
    };
    setup::run_main("dashboard", level, run(args), || {
        Err("interrupted".to_owned())
    })
}

async fn run(args: Args) -> Result<(), String> {
    let tenant = TenantId::new(&args.tenant).map_err(|e| format!("--tenant: {e}"))?;
    // Held to the end: dropping it stops and deletes a throw-away server.
    let database = setup::database(SCHEMA, args.tenants).await?;
    let client = db::connect(&database.config).await?;
    let known = client
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant.as_str()])
        .await
        .map_err(|e| seed::describe(&e))?;
    if known.is_none() {
        return Err(format!(
            "--tenant {tenant} is not in the seed: ids run from {} to {}",
            seed::tenant_id(1),
            seed::tenant_id(args.tenants)
        ));
    }

    // The views are refreshed once now, so closed months come from them at
    // once, then in the background; with --no-views they are left alone.
    let queries = if args.views {
        let refreshed = views::refresh(&client).await?;
        eprintln!(
            "views refreshed in {}: months ending by {} come from them; refreshed again every {} s",
            stats::ms(refreshed.took),
            refreshed.complete_before_text,
            args.refresh_views_secs
        );
        Queries::Hybrid
    } else {
        Queries::Live
    };
    let _refresher = (args.views && !args.bench_views).then(|| {
        views::refresh_every(
            database.config.clone(),
            Duration::from_secs(args.refresh_views_secs),
        )
    });

    let pool = db::pool(database.config.clone(), args.pool, Duration::from_secs(5))?;
    // One limiter for every dashboard, sized to the pool: a query never
    // waits for a connection while its timeout runs. The fair one shares
    // the pool between tenants and sheds what could not finish in time.
    let planned = FanOut::new()
        .timeout(Duration::from_millis(args.timeout_ms))
        .deadline(Duration::from_millis(args.deadline_ms));
    let fifo = planned.clone().limiter(Arc::new(Semaphore::new(args.pool)));
    let planned_again = planned.clone();
    let fair_limiter = || {
        FairLimiter::new(args.pool).standing_queue(
            Duration::from_millis(args.queue_target_ms),
            Duration::from_millis(args.queue_interval_ms),
        )
    };
    let capped = args
        .tenant_cap
        .unwrap_or(NonZeroUsize::new(args.pool.div_ceil(2)).unwrap_or(NonZeroUsize::MIN));
    let fair_capped = planned
        .clone()
        .fair_limiter(fair_limiter().tenant_cap(capped));
    let fair = match args.tenant_cap {
        Some(cap) => planned.fair_limiter(fair_limiter().tenant_cap(cap)),
        None => planned.fair_limiter(fair_limiter()),
    };
    let concurrent = if args.fair {
        fair.clone()
    } else {
        fifo.clone()
    };
    let sequential = concurrent.clone().sequential();
    let mode = setup::modes(&args.slow, &args.broken);
    let policy = CachePolicy::ttl(Duration::from_secs(args.cache_ttl_secs))
        .stale_if_error(Duration::from_secs(600));
    let caching = caching(&args, policy).await?;

    if args.capacity {
        let tenants: Vec<TenantId> = (1..=args.tenants)
            .map(|n| TenantId::new(seed::tenant_id(n)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let dashboard = Arc::new(layers::layer(
            widgets::dashboard_with(&pool, queries, mode),
            None,
        ));
        let limiters = capacity::Limiters {
            fifo,
            fair_deadline_only: planned_again.fair_limiter(FairLimiter::new(args.pool)),
            fair,
            fair_capped: (capped.get(), fair_capped),
        };
        return capacity::run(dashboard, &tenants, &limiters, args.seconds.unwrap_or(4)).await;
    }
    if args.steady {
        let tenants: Vec<TenantId> = (1..=args.tenants)
            .map(|n| TenantId::new(seed::tenant_id(n)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let seconds = args.seconds.unwrap_or(12);
        return steady::run(&pool, mode, &tenants, &concurrent, seconds).await;
    }
    if args.bench_views {
        let tenants: Vec<TenantId> = (1..=args.tenants)
            .map(|n| TenantId::new(seed::tenant_id(n)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let with_views = widgets::dashboard_with(&pool, Queries::Hybrid, mode);
        let live = widgets::dashboard_with(&pool, Queries::Live, mode);
        return bench_views::run(
            args.dashboards,
            &with_views,
            &live,
            &sequential,
            &concurrent,
            &tenants,
            args.pool,
        )
        .await;
    }
    if args.bench {
        let tenants: Vec<TenantId> = (1..=args.tenants)
            .map(|n| TenantId::new(seed::tenant_id(n)).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let layered = |cache| {
            Arc::new(layers::layer(
                widgets::dashboard_with(&pool, queries, mode),
                cache,
            ))
        };
        let dashboards = bench::Dashboards {
            direct: layered(None),
            cached: layered(Some(&caching)),
        };
        return bench::run(&args, &pool, dashboards, &sequential, &concurrent, &tenants).await;
    }

    let layer = args.cache.then_some(&caching);
    let dashboard = layers::layer(widgets::dashboard_with(&pool, queries, mode), layer);
    let degraded = !args.slow.is_empty() || !args.broken.is_empty();
    if args.cache && degraded {
        // Show stale-if-error: fill the cache with healthy widgets, let the
        // values pass their TTL, then load the degraded dashboard.
        let healthy = layers::layer(
            widgets::dashboard_with(&pool, queries, |_| Mode::Normal),
            layer,
        );
        concurrent.run(&tenant, layers::refs(&healthy)).await;
        println!(
            "
cache filled by a healthy dashboard; waiting {} s for the values to pass their TTL",
            args.cache_ttl_secs
        );
        tokio::time::sleep(Duration::from_secs(args.cache_ttl_secs)).await;
    } else {
        // Fill the pool and prepare the statements (and, with --cache, the
        // cache) before anything is timed.
        concurrent.run(&tenant, layers::refs(&dashboard)).await;
    }

    println!(
        "\ntenant {tenant}: one dashboard, six queries at once (timeout {} ms each, deadline {} ms, pool {}; {})",
        args.timeout_ms,
        args.deadline_ms,
        args.pool,
        if args.views {
            "closed months from the views"
        } else {
            "live-only queries"
        }
    );
    let started = Instant::now();
    let (revenue, outstanding, children, invoices, payments, arrears) =
        concurrent.run(&tenant, layers::refs(&dashboard)).await;
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

    println!("\n{} rounds each, same tenant:", args.rounds);
    let (seq, per_query) = rounds(&sequential, &tenant, &dashboard, args.rounds).await;
    let (conc, _) = rounds(&concurrent, &tenant, &dashboard, args.rounds).await;
    println!(
        "  sequential  p50 {:>10}  p95 {:>10}",
        stats::ms(seq.p(50)),
        stats::ms(seq.p(95))
    );
    println!(
        "  concurrent  p50 {:>10}  p95 {:>10}",
        stats::ms(conc.p(50)),
        stats::ms(conc.p(95))
    );
    let medians: Vec<Duration> = per_query.iter().map(|s| s.p(50)).collect();
    let sum: Duration = medians.iter().sum();
    let slowest = medians.iter().max().copied().unwrap_or_default();
    println!(
        "  speedup {:.2}x measured (sequential p50 / concurrent p50); {:.2}x ideal (sum of query p50s {} / slowest {})",
        stats::ratio(seq.p(50), conc.p(50)),
        stats::ratio(sum, slowest),
        stats::ms(sum),
        stats::ms(slowest),
    );
    Ok(())
}

/// The cache `--cache` uses: in process, or shared through Redis when
/// `--redis URL` is given (builds with the `redis` feature).
async fn caching(args: &Args, policy: CachePolicy) -> Result<layers::Caching, String> {
    let local = QueryCache::new(100_000);
    match &args.redis {
        None => Ok(layers::Caching::InProcess(local, policy)),
        #[cfg(feature = "redis")]
        Some(url) => {
            let redis = fanout::cache::RedisTier::connect(url, "fanout-demo")
                .await
                .map_err(|e| format!("--redis: {e}"))?;
            let shared = fanout::cache::SharedCache::new(&local, &redis);
            Ok(layers::Caching::Shared(shared, policy))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(
            "--redis needs the redis feature: cargo run --example dashboard --features redis -- --cache --redis URL"
                .to_owned(),
        ),
    }
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

/// Times `rounds` dashboards; returns the whole-dashboard samples and each
/// query's.
async fn rounds(
    fan_out: &FanOut,
    tenant: &TenantId,
    dashboard: &layers::Layered,
    rounds: usize,
) -> (Samples, Vec<Samples>) {
    let mut whole = Samples::default();
    let mut per_query = vec![Samples::default(); widgets::NAMES.len()];
    for _ in 0..rounds {
        let started = Instant::now();
        let (a, b, c, d, e, f) = fan_out.run(tenant, layers::refs(dashboard)).await;
        whole.push(started.elapsed());
        for (samples, elapsed) in per_query.iter_mut().zip([
            a.elapsed, b.elapsed, c.elapsed, d.elapsed, e.elapsed, f.elapsed,
        ]) {
            samples.push(elapsed);
        }
    }
    (whole, per_query)
}
