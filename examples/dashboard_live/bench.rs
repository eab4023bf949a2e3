//! `--bench`: what a payment costs live dashboards, measured end to end on
//! the real database: from the writer's `COMMIT` returning to each
//! subscriber holding the new `total_revenue` (trigger, `NOTIFY`, the
//! change feed, one refresh of the tenant's dirty widgets, the push), the
//! widget queries a burst of payments costs against the number of
//! subscribers, and the memory a subscription holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::TenantId;
use fanout::live::Subscription;
use tokio::time::{Instant, sleep};
use tokio_postgres::{Client, Config};

use crate::stats::{Samples, ms};
use crate::writer::{self, Wrote};
use crate::{Service, service, widgets};

/// When each subscriber saw each value of `total_revenue`.
type Seen = Arc<Mutex<Vec<(i64, Instant)>>>;

pub async fn run(config: &Config, client: &mut Client, tenant: &TenantId) -> Result<(), String> {
    println!("## Commit to update (payments 250 ms apart, one tenant)\n");
    println!(
        "| subscribers | payments | deliveries | p50 | p95 | p99 | max | widget queries per payment |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for subscribers in [1, 1000] {
        let service = service(config, 8).await?;
        let (pages, revenue) = subscribe(&service, tenant, subscribers).await?;
        let (seen, readers) = read(pages);
        let runs = service.runs.total();
        let mut commits = Vec::new();
        let mut expected = revenue;
        for n in 0..40 {
            let Wrote::Payment { amount_cents } = writer::pay(client, tenant, 1_000 + n).await?
            else {
                return Err(format!("{tenant} has no open invoice left to pay"));
            };
            expected += amount_cents;
            commits.push((expected, Instant::now()));
            sleep(Duration::from_millis(250)).await;
        }
        sleep(Duration::from_secs(1)).await;
        let queries = service.runs.total() - runs;
        for reader in readers {
            reader.abort();
        }
        let (latency, missing) = latencies(&commits, &seen);
        if missing > 0 {
            return Err(format!("{missing} deliveries never arrived"));
        }
        println!(
            "| {subscribers} | {} | {} | {} | {} | {} | {} | {:.1} |",
            commits.len(),
            latency.len(),
            ms(latency.p(50)),
            ms(latency.p(95)),
            ms(latency.p(99)),
            ms(latency.p(100)),
            queries as f64 / commits.len() as f64
        );
    }

    println!("\n## A burst of 50 payments committed back to back\n");
    println!(
        "| subscribers | widget queries | refreshes (of 5 widgets) | last subscriber current after |"
    );
    println!("|---:|---:|---:|---:|");
    for subscribers in [1, 10, 100, 1000] {
        let service = service(config, 8).await?;
        let (pages, revenue) = subscribe(&service, tenant, subscribers).await?;
        let (seen, readers) = read(pages);
        let runs = service.runs.total();
        let mut expected = revenue;
        let started = Instant::now();
        for n in 0..50 {
            if let Wrote::Payment { amount_cents } = writer::pay(client, tenant, 500 + n).await? {
                expected += amount_cents;
            }
        }
        let committed = Instant::now();
        let current = loop {
            let all = seen
                .iter()
                .all(|s| s.lock().unwrap().iter().any(|(v, _)| *v >= expected));
            if all {
                break committed.elapsed();
            }
            if committed.elapsed() > Duration::from_secs(10) {
                return Err("the burst never reached every subscriber".to_owned());
            }
            sleep(Duration::from_millis(1)).await;
        };
        sleep(Duration::from_millis(500)).await;
        let queries = service.runs.total() - runs;
        for reader in readers {
            reader.abort();
        }
        println!(
            "| {subscribers} | {queries} | {:.1} | {} (burst committed in {}) |",
            queries as f64 / 5.0,
            ms(current),
            ms(committed - started)
        );
    }

    println!("\n## Memory per subscription (10 000 subscribers of one tenant, snapshots read)\n");
    let service = service(config, 8).await?;
    let before = resident_bytes();
    let (pages, _) = subscribe(&service, tenant, 10_000).await?;
    let after = resident_bytes();
    println!(
        "resident memory grew by {} bytes per subscription (the Subscription value itself: {} bytes); {} database queries for the 10 000 snapshots",
        after.saturating_sub(before) / 10_000,
        size_of::<Subscription>(),
        service.runs.total()
    );
    drop(pages);
    Ok(())
}

/// `count` subscriptions to `tenant`'s six widgets, each past its
/// snapshot, and the revenue that showed.
async fn subscribe(
    service: &Service,
    tenant: &TenantId,
    count: usize,
) -> Result<(Vec<Subscription>, i64), String> {
    let mut pages = Vec::with_capacity(count);
    for _ in 0..count {
        pages.push(
            service
                .live
                .subscribe(tenant, widgets::NAMES)
                .map_err(|e| e.to_string())?,
        );
    }
    let mut revenue = 0;
    for page in &mut pages {
        let snapshot = page.next().await;
        revenue = total_revenue(&snapshot).ok_or("no total_revenue in the snapshot")?;
    }
    Ok((pages, revenue))
}

fn total_revenue(update: &fanout::live::Update) -> Option<i64> {
    update
        .widgets()
        .iter()
        .find(|w| w.name == "total_revenue")?
        .value
        .as_i64()
}

/// A task per subscription recording each revenue it sees, and when.
fn read(pages: Vec<Subscription>) -> (Vec<Seen>, Vec<tokio::task::JoinHandle<()>>) {
    pages
        .into_iter()
        .map(|mut page| {
            let seen = Seen::default();
            let record = Arc::clone(&seen);
            let reader = tokio::spawn(async move {
                loop {
                    let update = page.next().await;
                    if let Some(revenue) = total_revenue(&update) {
                        record.lock().unwrap().push((revenue, Instant::now()));
                    }
                }
            });
            (seen, reader)
        })
        .unzip()
}

/// For each commit and subscriber, how long after the commit the
/// subscriber first held a revenue at least the commit's; and how many
/// never did.
fn latencies(commits: &[(i64, Instant)], seen: &[Seen]) -> (Samples, usize) {
    let mut samples = Samples::default();
    let mut missing = 0;
    for seen in seen {
        let seen = seen.lock().unwrap();
        for (expected, committed) in commits {
            match seen.iter().find(|(revenue, _)| revenue >= expected) {
                Some((_, at)) => samples.push(at.saturating_duration_since(*committed)),
                None => missing += 1,
            }
        }
    }
    (samples, missing)
}

/// This process's resident memory, from /proc.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
