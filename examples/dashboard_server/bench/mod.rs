//! `--bench`: the service measured from outside, as its clients see it.
//! The bench seeds one database (`DATABASE_URL`'s, or a throw-away
//! PostgreSQL), starts servers as child processes of this same binary,
//! and drives them with real WebSocket and HTTP clients:
//!
//! - live: 50 WebSocket clients for each of 20 tenants (1000), payments
//!   committed 4 a second round-robin over the tenants for 30 s; commit
//!   to socket latency, server memory per idle connection, widget
//!   queries per payment; again with 5 clients a tenant (100), to show
//!   the queries do not follow the connections;
//! - JSON: 1, 32 and 400 closed-loop clients over the 20 tenants for 5 s
//!   each, against a server with the cache and one with `--no-cache`.

mod http;
mod json;
mod live;
mod server;

use std::time::Duration;

use fanout::TenantId;

use crate::stats::{ms, ratio};
use crate::{auth, db, seed, setup};
use server::Server;

const TENANTS: u32 = 20;
const LIVE: [live::Load; 2] = [
    live::Load {
        per_tenant: 50,
        rate: 4,
        seconds: 30,
    },
    live::Load {
        per_tenant: 5,
        rate: 4,
        seconds: 30,
    },
];
const JSON_CLIENTS: [usize; 3] = [1, 32, 400];
const JSON_SECONDS: u64 = 5;

/// A tenant and a token for it.
pub struct Tenant {
    pub id: TenantId,
    pub token: String,
}

/// Runs the bench with servers on `port` and `port + 1`.
pub async fn run(port: u16) -> Result<(), String> {
    let second_port = port
        .checked_add(1)
        .ok_or("--bench needs two ports, --port and the next")?;
    let database = setup::database(crate::SCHEMA, TENANTS).await?;
    let mut writer = db::connect(&database.config).await?;
    let signer = auth::Auth::new(server::SECRET.as_bytes());
    let tenants = (1..=TENANTS)
        .map(|n| {
            let id = TenantId::new(seed::tenant_id(n)).map_err(|e| e.to_string())?;
            let token = signer.token("bench", id.as_str(), Duration::from_secs(3600));
            Ok(Tenant { id, token })
        })
        .collect::<Result<Vec<_>, String>>()?;
    println!("server logs: {}\n", server::LOG);

    println!(
        "## Live: commit to WebSocket ({TENANTS} tenants, payments 4/s round-robin for 30 s, one server, cache on)\n"
    );
    println!(
        "| connections | payments | deliveries | missing | p50 | p95 | p99 | max | server RSS before / after opening | per idle connection | widget queries per payment |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for load in &LIVE {
        let server = Server::start(&database.url, port, &[]).await?;
        let report = live::run(&server, &mut writer, &tenants, load).await?;
        drop(server);
        let grown = report.resident_after.saturating_sub(report.resident_before);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} MiB | {:.1} KiB | {:.2} |",
            report.connections,
            report.payments,
            report.latency.len(),
            report.missing,
            ms(report.latency.p(50)),
            ms(report.latency.p(95)),
            ms(report.latency.p(99)),
            ms(report.latency.p(100)),
            report.resident_before as f64 / 1048576.0,
            report.resident_after as f64 / 1048576.0,
            grown as f64 / 1024.0 / report.connections as f64,
            report.fresh_queries / report.payments as f64,
        );
    }

    println!(
        "\n## JSON: closed-loop clients over {TENANTS} tenants, {JSON_SECONDS} s each, cache on against --no-cache\n"
    );
    println!(
        "| clients | cache | dashboards | dashboards/s | complete/s | p50 | p95 | p99 | errors | degraded | widget queries (per dashboard) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cached = Server::start(&database.url, port, &[]).await?;
    let uncached = Server::start(&database.url, second_port, &["--no-cache"]).await?;
    for server in [&cached, &uncached] {
        // Tenants looked up, and (with the cache) widgets cached.
        json::run(server, &tenants, TENANTS as usize, 1).await?;
    }
    let mut ratios = Vec::new();
    for clients in JSON_CLIENTS {
        let mut pair = Vec::new();
        for (server, label) in [(&cached, "on"), (&uncached, "off")] {
            let report = json::run(server, &tenants, clients, JSON_SECONDS).await?;
            println!(
                "| {clients} | {label} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {:.0} ({:.2}) |",
                report.latency.len(),
                report.per_second(),
                report.complete_per_second(),
                ms(report.latency.p(50)),
                ms(report.latency.p(95)),
                ms(report.latency.p(99)),
                report.errors,
                report.degraded,
                report.fresh_queries,
                report.fresh_queries / report.latency.len().max(1) as f64,
            );
            pair.push(report);
        }
        ratios.push((clients, pair));
    }
    println!();
    for (clients, pair) in &ratios {
        println!(
            "{clients} clients: with the cache, {:.1}x the complete dashboards per second at {:.2}x the p95",
            pair[0].complete_per_second() / pair[1].complete_per_second().max(0.01),
            ratio(pair[0].latency.p(95), pair[1].latency.p(95)),
        );
    }
    Ok(())
}
