//! The materialized views of views.sql (monthly revenue and monthly
//! invoice statistics per tenant): refreshed on demand and on a schedule.
//! What the hybrid widget queries (hybrid.sql) may read from them is
//! decided by the watermark the refresh sets; see views.sql.

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::{Client, Config};

use crate::{db, seed};

/// What one refresh did.
#[derive(Clone, Debug)]
pub struct Refreshed {
    /// Months ending at or before this instant are read from the views.
    #[allow(dead_code)] // the tests read it; the example prints the text
    pub complete_before: SystemTime,
    /// The same instant as the server writes it, in its TimeZone.
    pub complete_before_text: String,
    /// How long the refresh took.
    pub took: Duration,
}

/// Refreshes both views concurrently (readers keep reading the old
/// contents) and raises every tenant's watermark, in one transaction.
pub async fn refresh(client: &Client) -> Result<Refreshed, String> {
    let started = Instant::now();
    let row = client
        .query_one(
            "SELECT at, at::text FROM refresh_dashboard_views() AS at",
            &[],
        )
        .await
        .map_err(|e| format!("refreshing the views: {}", seed::describe(&e)))?;
    Ok(Refreshed {
        complete_before: row.get(0),
        complete_before_text: row.get(1),
        took: started.elapsed(),
    })
}

/// Refreshes the views every `every` on a connection of its own, until the
/// returned handle is dropped. A failed refresh is logged (WARN) and tried
/// again at the next tick: the hybrid queries stay exact meanwhile, only
/// more of them is computed live.
pub fn refresh_every(config: Config, every: Duration) -> Refresher {
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client = None;
        loop {
            ticks.tick().await;
            if client.is_none() {
                match db::connect(&config).await {
                    Ok(connected) => client = Some(connected),
                    Err(e) => {
                        tracing::warn!(error = %e, "views not refreshed");
                        continue;
                    }
                }
            }
            if let Some(connected) = &client {
                match refresh(connected).await {
                    Ok(done) => tracing::debug!(
                        elapsed_ms = done.took.as_millis() as u64,
                        "views refreshed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "views not refreshed");
                        if connected.is_closed() {
                            client = None;
                        }
                    }
                }
            }
        }
    });
    Refresher(task)
}

/// The background refresh; dropping it stops the task. A refresh already
/// sent runs to its end on the server: one transaction, all or nothing.
pub struct Refresher(tokio::task::JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}
