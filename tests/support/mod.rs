//! Shared helpers: a query with a scripted latency and ending, drop
//! counting, and trace capture.
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::{DashboardQuery, QueryContext};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// How a scripted query ends after its latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Ok,
    Fail,
    Panic,
    Hang,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} failed")]
pub struct ScriptedError(pub &'static str);

/// A dashboard query that sleeps (virtual time) and then ends as scripted.
/// Its value is its latency in milliseconds; its fallback is -1.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub name: &'static str,
    pub latency: Duration,
    pub ending: Ending,
    pub timeout: Option<Duration>,
    pub runs: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<QueryContext>>>,
}

impl Scripted {
    pub fn new(name: &'static str, latency_ms: u64) -> Self {
        Self {
            name,
            latency: Duration::from_millis(latency_ms),
            ending: Ending::Ok,
            timeout: None,
            runs: Arc::default(),
            seen: Arc::default(),
        }
    }

    pub fn ending(mut self, ending: Ending) -> Self {
        self.ending = ending;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl DashboardQuery for Scripted {
    type Output = i64;
    type Error = ScriptedError;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<i64, ScriptedError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(ctx);
        tokio::time::sleep(self.latency).await;
        match self.ending {
            Ending::Ok => Ok(self.latency.as_millis() as i64),
            Ending::Fail => Err(ScriptedError(self.name)),
            Ending::Panic => panic!("{} exploded", self.name),
            Ending::Hang => std::future::pending().await,
        }
    }

    fn fallback(&self) -> i64 {
        -1
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// The reference spec's six queries and latencies.
pub fn reference_dashboard() -> (Scripted, Scripted, Scripted, Scripted, Scripted, Scripted) {
    (
        Scripted::new("total_revenue", 250),
        Scripted::new("outstanding", 200),
        Scripted::new("child_count", 150),
        Scripted::new("invoice_stats", 300),
        Scripted::new("recent_payments", 350),
        Scripted::new("arrears", 250),
    )
}

/// Counts how many guards were dropped: put one in a future to see when the
/// future is dropped.
#[derive(Clone, Debug, Default)]
pub struct DropCounter(Arc<AtomicUsize>);

impl DropCounter {
    pub fn guard(&self) -> DropGuard {
        DropGuard(Arc::clone(&self.0))
    }

    pub fn dropped(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// One captured event: its level and its fields as text.
#[derive(Clone, Debug)]
pub struct Captured {
    pub level: Level,
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    pub fn events(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    /// Installs a subscriber for the current thread that records every
    /// event at every level; keep the guard alive while the test runs.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }
}

struct FieldText<'a>(&'a mut BTreeMap<String, String>);

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut FieldText(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
}
