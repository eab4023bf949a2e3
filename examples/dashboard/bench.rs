//! `--bench`: the dashboard under load. C clients share one pool and one
//! limiter and run a fixed number of dashboards, loaded sequentially and
//! then concurrently, spread over every tenant; then through the cache,
//! every client asking for the same tenant.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fanout::{FanOut, TenantId};

use crate::cli::Args;
use crate::layers::{self, Layered};
use crate::stats::{self, Samples};
use crate::widgets;
use deadpool_postgres::Pool;

/// What one load run measured.
#[derive(Default)]
struct Load {
    whole: Samples,
    per_query: Vec<Samples>,
    wall: Duration,
    degraded: usize,
}

/// The dashboards the load test compares: straight from the database, and
/// through the in-process cache.
pub struct Dashboards {
    pub direct: Arc<Layered>,
    pub cached: Arc<Layered>,
}

pub async fn run(
    args: &Args,
    pool: &Pool,
    dashboards: Dashboards,
    sequential: &FanOut,
    concurrent: &FanOut,
    tenants: &[TenantId],
) -> Result<(), String> {
    let tenants: Arc<[TenantId]> = tenants.into();
    // Fill the pool and prepare every statement before anything is timed.
    for _ in 0..args.pool {
        concurrent
            .run(&tenants[0], layers::refs(&dashboards.direct))
            .await;
    }
    statement_overhead(pool).await?;
    let single = (args.dashboards / 4).max(50);
    println!(
        "load: pool {} with a shared {} limiter of {} permits, {} tenants; timeout {} ms, deadline {} ms\n",
        args.pool,
        if args.fair { "fair" } else { "FIFO" },
        args.pool,
        tenants.len(),
        args.timeout_ms,
        args.deadline_ms
    );
    println!(
        "| clients | loading    | dashboards | dashboards/s |        p50 |        p95 |        p99 | degraded widgets |"
    );
    println!(
        "|--------:|------------|-----------:|-------------:|-----------:|-----------:|-----------:|-----------------:|"
    );
    let mut results = Vec::new();
    for (clients, total) in [(1, single), (args.clients, args.dashboards)] {
        for (name, fan_out) in [("sequential", sequential), ("concurrent", concurrent)] {
            let load = load(fan_out, &dashboards.direct, &tenants, clients, total).await;
            print_row(clients, name, &load);
            results.push((clients, name, load));
        }
    }

    // The cache: every client asks for the same tenant, the stampede at
    // 9:00; the first dashboard fills it.
    let one_tenant: Arc<[TenantId]> = Arc::from(&tenants[..1]);
    let before = layers::runs(&dashboards.cached);
    let mut cached = Vec::new();
    for clients in [1, args.clients] {
        let load = load(
            concurrent,
            &dashboards.cached,
            &one_tenant,
            clients,
            args.dashboards,
        )
        .await;
        print_row(clients, "cached", &load);
        cached.push((clients, load));
    }
    let executions: Vec<usize> = layers::runs(&dashboards.cached)
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect();

    let one_client = |mode: &str| {
        results
            .iter()
            .find(|(c, n, _)| *c == 1 && *n == mode)
            .map(|(_, _, l)| l)
    };
    if let (Some(seq), Some(conc)) = (one_client("sequential"), one_client("concurrent")) {
        let slowest_p95 = seq
            .per_query
            .iter()
            .map(|s| s.p(95))
            .max()
            .unwrap_or_default();
        let medians: Vec<Duration> = seq.per_query.iter().map(|s| s.p(50)).collect();
        let sum: Duration = medians.iter().sum();
        let slowest = medians.iter().max().copied().unwrap_or_default();
        println!(
            "\n1 client: concurrent p95 {} is {:.2}x the slowest single query's p95 ({}); speedup {:.2}x measured at p50, {:.2}x ideal (sum of query p50s / slowest)",
            stats::ms(conc.whole.p(95)),
            stats::ratio(conc.whole.p(95), slowest_p95),
            stats::ms(slowest_p95),
            stats::ratio(seq.whole.p(50), conc.whole.p(50)),
            stats::ratio(sum, slowest),
        );
        if let Some((_, hit)) = cached.first() {
            println!(
                "1 client: a cached dashboard's p50 {} is {:.0}x faster than an uncached one's ({})",
                stats::ms(hit.whole.p(50)),
                stats::ratio(conc.whole.p(50), hit.whole.p(50)),
                stats::ms(conc.whole.p(50)),
            );
        }
    }
    let many = |mode: &str| {
        results
            .iter()
            .find(|(c, n, _)| *c == args.clients && *n == mode)
            .map(|(_, _, l)| l)
    };
    if let (Some(seq), Some(conc)) = (many("sequential"), many("concurrent")) {
        let throughput = |l: &Load| l.whole.len() as f64 / l.wall.as_secs_f64();
        println!(
            "{} clients: concurrent throughput is {:.2}x sequential's",
            args.clients,
            throughput(conc) / throughput(seq)
        );
    }
    println!(
        "cached, {} dashboards of one tenant within one {} s TTL: the database ran each widget's query {} times",
        cached.iter().map(|(_, l)| l.whole.len()).sum::<usize>(),
        args.cache_ttl_secs,
        executions
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(())
}

fn print_row(clients: usize, name: &str, load: &Load) {
    println!(
        "| {clients:>7} | {name:<10} | {:>10} | {:>12.1} | {:>10} | {:>10} | {:>10} | {:>16} |",
        load.whole.len(),
        load.whole.len() as f64 / load.wall.as_secs_f64(),
        stats::ms(load.whole.p(50)),
        stats::ms(load.whole.p(95)),
        stats::ms(load.whole.p(99)),
        load.degraded,
    );
}

/// What the server-side deadline costs: `SELECT 1` on one pooled connection,
/// plain and through `fanout::postgres::query` (SET, statement and RESET
/// pipelined), alternating so both see the same machine.
async fn statement_overhead(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let statement = client
        .prepare_cached("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    let tenant = TenantId::new("overhead").map_err(|e| e.to_string())?;
    let (mut plain, mut limited) = (Samples::default(), Samples::default());
    for _ in 0..2000 {
        let begun = Instant::now();
        client
            .query(&statement, &[])
            .await
            .map_err(|e| e.to_string())?;
        plain.push(begun.elapsed());
        let ctx = fanout::QueryContext::new(
            tenant.clone(),
            Some(tokio::time::Instant::now() + Duration::from_secs(2)),
        );
        let begun = Instant::now();
        fanout::postgres::query(&client, &ctx, &statement, &[])
            .await
            .map_err(|e| e.to_string())?;
        limited.push(begun.elapsed());
    }
    println!(
        "SELECT 1 on one connection, 2000 each: plain p50 {}, with server-side deadline p50 {} ({:.2}x)\n",
        stats::ms(plain.p(50)),
        stats::ms(limited.p(50)),
        stats::ratio(limited.p(50), plain.p(50)),
    );
    Ok(())
}

/// Runs `total` dashboards from `clients` tasks, tenant after tenant.
async fn load(
    fan_out: &FanOut,
    dashboard: &Arc<Layered>,
    tenants: &Arc<[TenantId]>,
    clients: usize,
    total: usize,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (fan_out, dashboard, tenants, next) = (
                fan_out.clone(),
                Arc::clone(dashboard),
                Arc::clone(tenants),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut load = Load {
                    per_query: vec![Samples::default(); widgets::NAMES.len()],
                    ..Load::default()
                };
                loop {
                    let ticket = next.fetch_add(1, Ordering::Relaxed);
                    if ticket >= total {
                        return load;
                    }
                    let tenant = &tenants[ticket % tenants.len()];
                    let begun = Instant::now();
                    let (a, b, c, d, e, f) = fan_out.run(tenant, layers::refs(&dashboard)).await;
                    load.whole.push(begun.elapsed());
                    let each = [
                        (a.elapsed, a.is_degraded()),
                        (b.elapsed, b.is_degraded()),
                        (c.elapsed, c.is_degraded()),
                        (d.elapsed, d.is_degraded()),
                        (e.elapsed, e.is_degraded()),
                        (f.elapsed, f.is_degraded()),
                    ];
                    for (samples, (elapsed, degraded)) in load.per_query.iter_mut().zip(each) {
                        samples.push(elapsed);
                        load.degraded += usize::from(degraded);
                    }
                }
            })
        })
        .collect();
    let mut all = Load {
        per_query: vec![Samples::default(); widgets::NAMES.len()],
        ..Load::default()
    };
    for task in tasks {
        if let Ok(part) = task.await {
            all.whole.extend(part.whole);
            all.degraded += part.degraded;
            for (mine, theirs) in all.per_query.iter_mut().zip(part.per_query) {
                mine.extend(theirs);
            }
        }
    }
    all.wall = started.elapsed();
    all
}
