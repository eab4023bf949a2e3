//! `--steady`: the dashboard through the in-process cache under a steady
//! load for several TTL windows, TTL only against refresh-ahead: with a
//! TTL alone every expiry makes some dashboards wait for the database;
//! with `refresh_after`, a background reload replaces each value first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fanout::cache::{CachePolicy, QueryCache};
use fanout::{FanOut, TenantId};

use crate::layers::{self, Caching};
use crate::stats::{self, Samples};
use crate::widgets::{self, Mode};

/// The TTL of every widget in this run, and when refresh-ahead reloads.
const TTL: Duration = Duration::from_secs(2);
const REFRESH_AFTER: Duration = Duration::from_secs(1);
/// How often each client loads a dashboard.
const PACE: Duration = Duration::from_millis(10);
const CLIENTS: usize = 8;

pub async fn run(
    pool: &Pool,
    mode: impl Fn(&str) -> Mode + Copy,
    tenants: &[TenantId],
    fan_out: &FanOut,
    seconds: u64,
) -> Result<(), String> {
    let span = Duration::from_secs(seconds).max(3 * TTL);
    println!(
        "steady: {CLIENTS} clients, one dashboard each every {} ms over {} tenants, for {} s ({} TTL windows of {} s); the first window is warm-up and not counted\n",
        PACE.as_millis(),
        tenants.len(),
        span.as_secs(),
        span.as_secs() / TTL.as_secs(),
        TTL.as_secs()
    );
    println!(
        "| policy        | dashboards |       p50 |       p95 |       p99 |       max | p99 / p50 | database executions |"
    );
    println!(
        "|---------------|-----------:|----------:|----------:|----------:|----------:|----------:|--------------------:|"
    );
    let ttl_only = CachePolicy::ttl(TTL).stale_if_error(Duration::from_secs(600));
    for (name, policy) in [
        ("TTL only", ttl_only),
        ("refresh-ahead", ttl_only.refresh_after(REFRESH_AFTER)),
    ] {
        let caching = Caching::InProcess(QueryCache::new(100_000), policy);
        let dashboard = Arc::new(layers::layer(
            widgets::dashboard(pool, mode),
            Some(&caching),
        ));
        let samples = steady(fan_out, &dashboard, tenants, span).await;
        let executions: usize = layers::runs(&dashboard).iter().sum();
        println!(
            "| {name:<13} | {:>10} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8.1}x | {executions:>19} |",
            samples.len(),
            stats::ms(samples.p(50)),
            stats::ms(samples.p(95)),
            stats::ms(samples.p(99)),
            stats::ms(samples.p(100)),
            stats::ratio(samples.p(99), samples.p(50)),
        );
    }
    Ok(())
}

/// Paced clients over every tenant for `span`; the latencies after the
/// first TTL window.
async fn steady(
    fan_out: &FanOut,
    dashboard: &Arc<layers::Layered>,
    tenants: &[TenantId],
    span: Duration,
) -> Samples {
    let started = Instant::now();
    let counted_from = started + TTL;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (fan_out, dashboard) = (fan_out.clone(), Arc::clone(dashboard));
            let tenants: Vec<TenantId> = tenants.to_vec();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                let mut tick = tokio::time::interval(PACE);
                let mut n = client;
                while started.elapsed() < span {
                    tick.tick().await;
                    let tenant = &tenants[n % tenants.len()];
                    n += CLIENTS;
                    let begun = Instant::now();
                    fan_out.run(tenant, layers::refs(&dashboard)).await;
                    if begun >= counted_from {
                        samples.push(begun.elapsed());
                    }
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for task in tasks {
        if let Ok(samples) = task.await {
            all.extend(samples);
        }
    }
    all
}
