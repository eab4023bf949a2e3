//! The JSON route under a closed loop: `clients` connections, each asking
//! for its tenant's dashboard again as soon as the last one arrives, for
//! a few seconds; the dashboards per second, their latency, and the
//! widget queries each cost.

use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Tenant;
use super::http::Connection;
use super::server::Server;
use crate::stats::Samples;

/// What one run measured.
pub struct Report {
    pub latency: Samples,
    pub elapsed: Duration,
    /// Answers other than 200, and clients whose connection failed.
    pub errors: usize,
    /// Dashboards with a widget that is neither fresh nor cached (a
    /// fallback, a stale value: the deadline or the limiter shed it).
    pub degraded: usize,
    pub fresh_queries: f64,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.latency.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Dashboards a second whose every widget is fresh or cached: what
    /// the clients got in full (a shed widget comes back at once, as its
    /// fallback, so the plain rate counts those too).
    pub fn complete_per_second(&self) -> f64 {
        (self.latency.len() - self.degraded) as f64 / self.elapsed.as_secs_f64()
    }
}

pub async fn run(
    server: &Server,
    tenants: &[Tenant],
    clients: usize,
    seconds: u64,
) -> Result<Report, String> {
    let queries_before = server.fresh_queries().await?;
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Connection::open(server.port()).await?);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut running = JoinSet::new();
    for (n, mut connection) in connections.into_iter().enumerate() {
        let tenant = &tenants[n % tenants.len()];
        let (path, token) = (
            format!("/tenants/{}/dashboard", tenant.id),
            tenant.token.clone(),
        );
        running.spawn(async move {
            let (mut latency, mut errors, mut degraded) = (Samples::default(), 0, 0);
            while Instant::now() < end {
                let sent = Instant::now();
                match connection.get(&path, Some(&token)).await {
                    Ok((status, body)) if status.is_success() => {
                        latency.push(sent.elapsed());
                        if is_degraded(&body) {
                            degraded += 1;
                        }
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latency, errors, degraded)
        });
    }
    let mut report = Report {
        latency: Samples::default(),
        elapsed: Duration::ZERO,
        errors: 0,
        degraded: 0,
        fresh_queries: 0.0,
    };
    while let Some(done) = running.join_next().await {
        let (latency, errors, degraded) = done.map_err(|e| format!("a client panicked: {e}"))?;
        report.latency.extend(latency);
        report.errors += errors;
        report.degraded += degraded;
    }
    report.elapsed = started.elapsed();
    report.fresh_queries = server.fresh_queries().await? - queries_before;
    Ok(report)
}

#[derive(Deserialize)]
struct Dashboard {
    widgets: Vec<WidgetSource>,
}

#[derive(Deserialize)]
struct WidgetSource {
    source: String,
}

fn is_degraded(body: &[u8]) -> bool {
    match serde_json::from_slice::<Dashboard>(body) {
        Ok(dashboard) => dashboard
            .widgets
            .iter()
            .any(|w| !matches!(w.source.as_str(), "fresh" | "cached" | "refreshing")),
        Err(_) => true,
    }
}
