//! `--capacity`: the dashboard past saturation. Closed-loop clients (each
//! loads a dashboard, then the next, for a fixed time) share one pool, once
//! under a FIFO semaphore and once under the fair limiter with shedding:
//! a capacity curve from 1x to 20x saturation, then a noisy neighbour, one
//! tenant flooding while the others run as usual.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::{FanOut, TenantId};

use crate::layers::{self, Layered};
use crate::stats::{self, Samples};

/// What the clients of one tenant class measured.
#[derive(Default)]
struct Measured {
    /// Every dashboard's latency.
    all: Samples,
    /// The latency of dashboards whose six widgets were all fresh.
    fresh: Samples,
    /// Widgets the fair limiter shed.
    shed: usize,
    /// Widgets degraded otherwise (cut at the deadline, timed out, failed).
    degraded: usize,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.all.extend(other.all);
        self.fresh.extend(other.fresh);
        self.shed += other.shed;
        self.degraded += other.degraded;
    }
}

/// The limiters compared, each on its own `FanOut`: the FIFO semaphore,
/// the fair limiter, and the fair limiter with a tenant cap (and the cap).
pub struct Limiters {
    pub fifo: FanOut,
    pub fair: FanOut,
    /// The fair limiter without the standing-queue rule: only a query that
    /// could no longer finish before its deadline is shed.
    pub fair_deadline_only: FanOut,
    pub fair_capped: (usize, FanOut),
}

pub async fn run(
    dashboard: Arc<Layered>,
    tenants: &[TenantId],
    limiters: &Limiters,
    seconds: u64,
) -> Result<(), String> {
    let span = Duration::from_secs(seconds);
    // Warm the pool and the statements, then find saturation: the clients
    // it takes to keep the pool busy (throughput at load x latency alone).
    closed_loop(
        &limiters.fifo,
        &dashboard,
        &classes(tenants, 8, &[]),
        span / 2,
    )
    .await;
    let alone = closed_loop(&limiters.fifo, &dashboard, &classes(tenants, 1, &[]), span).await;
    let busy = closed_loop(&limiters.fifo, &dashboard, &classes(tenants, 64, &[]), span).await;
    let capacity = busy.0.all.len() as f64 / span.as_secs_f64();
    let latency = alone.0.all.p(50);
    let saturation = ((capacity * latency.as_secs_f64()).ceil() as usize).max(1);
    println!(
        "capacity: {capacity:.0} dashboards/s at 64 clients; one client alone: p50 {}; saturation at about {saturation} clients\n",
        stats::ms(latency)
    );
    println!(
        "| clients | x sat. | limiter             | dashboards/s | fully fresh/s | fresh p50 | fresh p95 | all p95 | shed widgets | other degraded |"
    );
    println!(
        "|--------:|-------:|---------------------|-------------:|--------------:|----------:|----------:|--------:|-------------:|---------------:|"
    );
    let curve = [
        ("fifo", &limiters.fifo),
        ("fair, deadline only", &limiters.fair_deadline_only),
        ("fair", &limiters.fair),
    ];
    for multiple in [1, 2, 5, 10, 20, 50, 100, 200] {
        let clients = saturation * multiple;
        for (name, fan_out) in curve {
            let (m, wall) =
                closed_loop(fan_out, &dashboard, &classes(tenants, clients, &[]), span).await;
            let per_s = |n: usize| n as f64 / wall.as_secs_f64();
            println!(
                "| {clients:>7} | {multiple:>5}x | {name:<19} | {:>12.1} | {:>13.1} | {:>9} | {:>9} | {:>7} | {:>12} | {:>14} |",
                per_s(m.all.len()),
                per_s(m.fresh.len()),
                stats::ms(m.fresh.p(50)),
                stats::ms(m.fresh.p(95)),
                stats::ms(m.all.p(95)),
                m.shed,
                m.degraded,
            );
        }
    }

    // The noisy neighbour: one client for each quiet tenant; the flooding
    // tenant runs five times as many clients as all of them together.
    let (flooder, quiet) = tenants.split_first().ok_or("no tenants")?;
    let quiet_clients = quiet.len();
    let flood_clients = 5 * quiet_clients;
    println!(
        "\nnoisy neighbour: {quiet_clients} quiet tenants with one client each; {flooder} floods with {flood_clients} clients\n"
    );
    println!(
        "| limiter             | flood | quiet dashboards/s | quiet fresh p50 | quiet fresh p95 | quiet all p95 | quiet shed widgets | flooder dashboards/s |"
    );
    println!(
        "|---------------------|-------|-------------------:|----------------:|----------------:|--------------:|-------------------:|---------------------:|"
    );
    let capped_name = format!("fair, cap {}", limiters.fair_capped.0);
    let with_cap = [
        ("fifo", &limiters.fifo),
        ("fair, deadline only", &limiters.fair_deadline_only),
        ("fair", &limiters.fair),
        (capped_name.as_str(), &limiters.fair_capped.1),
    ];
    for (name, fan_out) in with_cap {
        let mut calm_p95 = Duration::ZERO;
        for flood in [false, true] {
            let flooding = if flood { flood_clients } else { 0 };
            let plan = classes(quiet, 1, &vec![flooder.clone(); flooding]);
            let (m, wall, flood_m) = closed_loop_split(fan_out, &dashboard, &plan, span).await;
            let per_s = |n: usize| n as f64 / wall.as_secs_f64();
            println!(
                "| {name:<19} | {:<5} | {:>18.1} | {:>15} | {:>15} | {:>13} | {:>18} | {:>20.1} |",
                if flood { "yes" } else { "no" },
                per_s(m.all.len()),
                stats::ms(m.fresh.p(50)),
                stats::ms(m.fresh.p(95)),
                stats::ms(m.all.p(95)),
                m.shed,
                per_s(flood_m.all.len()),
            );
            if flood {
                println!(
                    "| {name:<19} | ratio | quiet fresh p95 with the flood is {:.2}x without |  |  |  |  |",
                    stats::ratio(m.fresh.p(95), calm_p95)
                );
            } else {
                calm_p95 = m.fresh.p(95);
            }
        }
    }
    Ok(())
}

/// One client per entry: the tenant it loads, and whether it is a flooder.
fn classes(tenants: &[TenantId], clients: usize, flooders: &[TenantId]) -> Vec<(TenantId, bool)> {
    let mut plan: Vec<_> = (0..clients)
        .map(|n| (tenants[n % tenants.len()].clone(), false))
        .collect();
    plan.extend(flooders.iter().map(|t| (t.clone(), true)));
    plan
}

async fn closed_loop(
    fan_out: &FanOut,
    dashboard: &Arc<Layered>,
    plan: &[(TenantId, bool)],
    span: Duration,
) -> (Measured, Duration) {
    let (m, wall, _) = closed_loop_split(fan_out, dashboard, plan, span).await;
    (m, wall)
}

/// Runs one task per client of `plan` for `span`; returns what the normal
/// clients and the flooders measured, apart, and the wall time.
async fn closed_loop_split(
    fan_out: &FanOut,
    dashboard: &Arc<Layered>,
    plan: &[(TenantId, bool)],
    span: Duration,
) -> (Measured, Duration, Measured) {
    let started = Instant::now();
    let until = started + span;
    let tasks: Vec<_> = plan
        .iter()
        .map(|(tenant, flooder)| {
            let (fan_out, dashboard, tenant, flooder) = (
                fan_out.clone(),
                Arc::clone(dashboard),
                tenant.clone(),
                *flooder,
            );
            tokio::spawn(async move {
                let mut m = Measured::default();
                while Instant::now() < until {
                    let begun = Instant::now();
                    let (a, b, c, d, e, f) = fan_out.run(&tenant, layers::refs(&dashboard)).await;
                    let elapsed = begun.elapsed();
                    let sources = [
                        &a.source, &b.source, &c.source, &d.source, &e.source, &f.source,
                    ];
                    m.all.push(elapsed);
                    if sources.iter().all(|s| s.is_fresh()) {
                        m.fresh.push(elapsed);
                    }
                    for source in sources {
                        match source.label() {
                            "fresh" | "cached" | "refreshing" => {}
                            "shed" => m.shed += 1,
                            _ if matches!(
                                source,
                                fanout::Source::Stale {
                                    cause: fanout::Failure::Shed,
                                    ..
                                }
                            ) =>
                            {
                                m.shed += 1
                            }
                            _ => m.degraded += 1,
                        }
                    }
                }
                (flooder, m)
            })
        })
        .collect();
    let (mut normal, mut flood) = (Measured::default(), Measured::default());
    for task in tasks {
        if let Ok((flooder, m)) = task.await {
            if flooder {
                flood.merge(m)
            } else {
                normal.merge(m)
            }
        }
    }
    (normal, started.elapsed(), flood)
}
