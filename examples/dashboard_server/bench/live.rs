//! The live route under load: `per_tenant` WebSocket clients of each
//! tenant, payments committed at a steady rate round-robin over the
//! tenants, and for each payment and each client of its tenant the time
//! from the writer's `COMMIT` returning to the client holding the new
//! `total_revenue` (trigger, `NOTIFY`, the change feed, one refresh, the
//! JSON message, the socket). Also the server's resident memory before
//! and after the connections open, and the widget queries per payment.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep};
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;

use super::Tenant;
use super::http::Connection;
use super::server::Server;
use crate::stats::Samples;
use crate::writer::{self, Wrote};

/// When one client saw each value of `total_revenue` (its snapshot's
/// first).
type Seen = Arc<Mutex<Vec<(i64, Instant)>>>;

/// What one run measured.
pub struct Report {
    pub connections: usize,
    pub payments: usize,
    pub latency: Samples,
    pub missing: usize,
    pub resident_before: u64,
    pub resident_after: u64,
    pub fresh_queries: f64,
}

/// How the payments go: `rate` a second for `seconds`.
pub struct Load {
    pub per_tenant: usize,
    pub rate: u32,
    pub seconds: u64,
}

pub async fn run(
    server: &Server,
    writer: &mut Client,
    tenants: &[Tenant],
    load: &Load,
) -> Result<Report, String> {
    // Every tenant looked up and its widgets cached once, as on a server
    // that has been up a while: what the connections add is theirs.
    let mut warm = Connection::open(server.port()).await?;
    for tenant in tenants {
        let (status, _) = warm
            .get(
                &format!("/tenants/{}/dashboard", tenant.id),
                Some(&tenant.token),
            )
            .await?;
        if !status.is_success() {
            return Err(format!("warming {}: {status}", tenant.id));
        }
    }
    drop(warm);
    sleep(Duration::from_secs(1)).await;
    let resident_before = server.resident_bytes()?;

    let clients = open(server.port(), tenants, load.per_tenant).await?;
    let connections = clients.len();
    // Each client past its snapshot, then the connections idle a while.
    let started = Instant::now();
    while clients
        .iter()
        .any(|(_, seen, _)| seen.lock().unwrap().is_empty())
    {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("some clients had no snapshot within 30 s".to_owned());
        }
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let resident_after = server.resident_bytes()?;

    let mut revenue: Vec<i64> = (0..tenants.len())
        .map(|t| {
            clients
                .iter()
                .filter(|(tenant, _, _)| *tenant == t)
                .filter_map(|(_, seen, _)| seen.lock().unwrap().first().map(|(v, _)| *v))
                .max()
                .unwrap_or_default()
        })
        .collect();
    let queries_before = server.fresh_queries().await?;
    let mut commits = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / load.rate);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 0..load.seconds as usize * load.rate as usize {
        tick.tick().await;
        let t = n % tenants.len();
        let amount = 1_000 + 500 * (n as i64 % 7);
        let Wrote::Payment { amount_cents } = writer::pay(writer, &tenants[t].id, amount).await?
        else {
            return Err(format!("{} has no open invoice left to pay", tenants[t].id));
        };
        revenue[t] += amount_cents;
        commits.push((t, revenue[t], Instant::now()));
    }
    sleep(Duration::from_secs(2)).await;
    let fresh_queries = server.fresh_queries().await? - queries_before;

    let mut latency = Samples::default();
    let mut missing = 0;
    for (tenant, seen, reader) in &clients {
        reader.abort();
        let seen = seen.lock().unwrap();
        for (_, expected, committed) in commits.iter().filter(|(t, _, _)| t == tenant) {
            match seen.iter().find(|(v, _)| v >= expected) {
                Some((_, at)) => latency.push(at.saturating_duration_since(*committed)),
                None => missing += 1,
            }
        }
    }
    Ok(Report {
        connections,
        payments: commits.len(),
        latency,
        missing,
        resident_before,
        resident_after,
        fresh_queries,
    })
}

/// `per_tenant` WebSocket clients of each tenant, opened 64 at a time,
/// each with a task recording the revenues it receives.
async fn open(
    port: u16,
    tenants: &[Tenant],
    per_tenant: usize,
) -> Result<Vec<(usize, Seen, JoinHandle<()>)>, String> {
    let wanted = (0..per_tenant).flat_map(|_| 0..tenants.len());
    let connecting = stream::iter(wanted).map(|t| {
        let url = format!(
            "ws://127.0.0.1:{port}/tenants/{}/live?access_token={}",
            tenants[t].id, tenants[t].token
        );
        async move {
            let (socket, _) = tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| format!("opening a WebSocket for {}: {e}", tenants[t].id))?;
            let seen = Seen::default();
            let record = Arc::clone(&seen);
            let reader = tokio::spawn(async move {
                let mut socket = socket;
                // Reading also answers the server's pings.
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message
                        && let Some(revenue) = total_revenue(&text)
                    {
                        record.lock().unwrap().push((revenue, Instant::now()));
                    }
                }
            });
            Ok::<_, String>((t, seen, reader))
        }
    });
    connecting
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

#[derive(Deserialize)]
struct LiveMessage {
    #[serde(default)]
    widgets: Vec<WidgetMessage>,
}

#[derive(Deserialize)]
struct WidgetMessage {
    name: String,
    value: serde_json::Value,
}

/// The `total_revenue` a live message carries, if it carries one.
fn total_revenue(text: &str) -> Option<i64> {
    let message: LiveMessage = serde_json::from_str(text).ok()?;
    message
        .widgets
        .iter()
        .find(|w| w.name == "total_revenue")?
        .value
        .as_i64()
}
