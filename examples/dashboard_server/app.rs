//! The dashboard service: its state and its routes, apart from `main` so
//! that `tests/server.rs` serves the same router.
//!
//! - `GET /tenants/{id}/dashboard`: every widget's value, source and
//!   latency as one JSON document, once the last widget has settled.
//! - `GET /tenants/{id}/dashboard/stream`: the same widgets as Server-Sent
//!   Events, one `widget` event each the moment it settles (fast widgets
//!   first), then a `done` event.
//! - `GET /metrics`: the `fanout_*` metrics in the Prometheus text format.
//!
//! Both dashboard routes take `?widgets=a,b,c` to show those widgets in
//! that order; without it they show all six in dashboard order. A bad
//! tenant id or widget list is a 400 with `{"error": "..."}`; a widget that
//! fails shows its fallback, marked, and the page is still a 200.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use fanout::dynamic::{Widget, WidgetRegistry};
use fanout::{DashboardQuery, FairLimiter, FanOut, Outcome, TenantId};
use futures_util::{Stream, StreamExt, stream};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::widgets::{self, Mode};

/// How long each widget query and the whole dashboard may take, and how
/// long a dashboard may wait for its first permit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Each query's timeout.
    pub timeout: Duration,
    /// The whole dashboard's deadline.
    pub deadline: Duration,
    /// The fair limiter's standing-queue rule, `(target, interval)`
    /// (see `FairLimiter::standing_queue`); `None` to wait as long as the
    /// deadline allows.
    pub standing_queue: Option<(Duration, Duration)>,
}

/// What every request shares: one fan-out configuration whose limiter is
/// sized to the pool, the pool, the widgets by name and the metrics.
pub struct AppState {
    fan_out: FanOut,
    pool: Pool,
    registry: WidgetRegistry,
    metrics: PrometheusHandle,
}

impl AppState {
    /// The six widgets on `pool`, each behaving as `mode` says for its
    /// name, under `limits`; one limiter of as many permits as the pool
    /// has connections serves every request, so a query never waits for a
    /// connection while its timeout runs. The limiter is fair between
    /// tenants and sheds under overload (`limits.standing_queue`: by
    /// default a dashboard waits at most 100 ms for its first permit, 20 ms
    /// once the queue has stood that long, then degrades instead of
    /// answering late).
    pub fn new(
        pool: Pool,
        limits: Limits,
        mode: impl Fn(&str) -> Mode,
        metrics: PrometheusHandle,
    ) -> Self {
        let mut limiter = FairLimiter::new(pool.status().max_size);
        if let Some((target, interval)) = limits.standing_queue {
            limiter = limiter.standing_queue(target, interval);
        }
        let fan_out = FanOut::new()
            .timeout(limits.timeout)
            .deadline(limits.deadline)
            .fair_limiter(limiter);
        let (revenue, outstanding, children, invoices, payments, arrears) =
            widgets::dashboard(&pool, mode);
        let mut registry = WidgetRegistry::new();
        registry
            .register(revenue)
            .and_then(|r| r.register(outstanding))
            .and_then(|r| r.register(children))
            .and_then(|r| r.register(invoices))
            .and_then(|r| r.register(payments))
            .and_then(|r| r.register(arrears))
            .expect("the six widgets have different names");
        Self {
            fan_out,
            pool,
            registry,
            metrics,
        }
    }

    /// The pool the widgets query.
    #[allow(dead_code)] // for callers that want pool statistics
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The widgets `?widgets=` names, in its order; all six in dashboard
    /// order without it.
    fn select(&self, widgets: Option<&str>) -> Result<Vec<Widget>, ApiError> {
        let selected = match widgets {
            None => self.registry.select(widgets::NAMES),
            Some(list) if list.trim().is_empty() => self.registry.select(Vec::<&str>::new()),
            Some(list) => self.registry.select(list.split(',')),
        };
        selected.map_err(|e| ApiError::bad_request(format!("widgets: {e}")))
    }
}

/// The service's routes on `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/tenants/{id}/dashboard", get(dashboard))
        .route("/tenants/{id}/dashboard/stream", get(dashboard_stream))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(Arc::new(state))
}

type Shared = State<Arc<AppState>>;

/// `?widgets=a,b,c`
#[derive(Debug, Deserialize)]
struct WidgetsParam {
    widgets: Option<String>,
}

/// One widget as the JSON page and each SSE `widget` event show it.
#[derive(Debug, Serialize)]
struct WidgetJson {
    name: &'static str,
    value: Value,
    /// The `Source::label` word: `fresh`, `error`, `timed_out`, ...
    source: &'static str,
    /// `Source`'s Display: `fresh`, `fallback (timed out)`, ...
    detail: String,
    elapsed_ms: f64,
}

impl WidgetJson {
    fn new(name: &'static str, outcome: Outcome<Value>) -> Self {
        Self {
            name,
            source: outcome.source.label(),
            detail: outcome.source.to_string(),
            elapsed_ms: millis(outcome.elapsed),
            value: outcome.value,
        }
    }
}

#[derive(Debug, Serialize)]
struct DashboardJson {
    tenant: String,
    elapsed_ms: f64,
    widgets: Vec<WidgetJson>,
}

#[derive(Debug, Serialize)]
struct DoneJson {
    elapsed_ms: f64,
}

/// Milliseconds, to the microsecond.
fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1000.0
}

/// The tenant and widgets a dashboard request asks for.
fn parse_request(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WidgetsParam>, QueryRejection>,
) -> Result<(TenantId, Vec<Widget>), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tenant = TenantId::new(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Query(param) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let widgets = state.select(param.widgets.as_deref())?;
    Ok((tenant, widgets))
}

async fn dashboard(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WidgetsParam>, QueryRejection>,
) -> Result<Json<DashboardJson>, ApiError> {
    let (tenant, widgets) = parse_request(&state, id, query)?;
    let names: Vec<&'static str> = widgets.iter().map(|w| w.name()).collect();
    let (outcomes, report) = state.fan_out.run_with_report(&tenant, widgets).await;
    Ok(Json(DashboardJson {
        tenant: tenant.to_string(),
        elapsed_ms: millis(report.elapsed),
        widgets: names
            .into_iter()
            .zip(outcomes)
            .map(|(name, outcome)| WidgetJson::new(name, outcome))
            .collect(),
    }))
}

async fn dashboard_stream(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WidgetsParam>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (tenant, widgets) = parse_request(&state, id, query)?;
    let fan_out = state.fan_out.clone();
    // `run_stream` borrows the widgets, so an async block owns both and
    // feeds the events through a channel. Nothing is spawned: the block
    // is polled as part of the response body, and a client that hangs up
    // drops it and with it every query still running.
    let (events, mut received) = mpsc::unbounded_channel::<Event>();
    let produce = async move {
        let started = Instant::now();
        let mut settled = fan_out.run_stream(&tenant, &widgets);
        while let Some((index, outcome)) = settled.next().await {
            let widget = WidgetJson::new(widgets[index].name(), outcome);
            let _ = events.send(json_event("widget", &widget));
        }
        let done = DoneJson {
            elapsed_ms: millis(started.elapsed()),
        };
        let _ = events.send(json_event("done", &done));
    };
    let produced = stream::once(produce).filter_map(|()| async { None });
    let forwarded = stream::poll_fn(move |cx| received.poll_recv(cx));
    let events = stream::select(produced, forwarded).map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn json_event(name: &'static str, data: &impl Serialize) -> Event {
    // Serializing these plain structs cannot fail; a failure would still
    // be one line, not a dropped event.
    let data = serde_json::to_string(data)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string());
    Event::default().event(name).data(data)
}

async fn metrics(State(state): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such route; try GET /tenants/{id}/dashboard, \
                  /tenants/{id}/dashboard/stream or /metrics"
            .to_owned(),
    }
}

/// An error response: its status and `{"error": "<one line>"}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        let message: String = message.into();
        let one_line = message.lines().next().unwrap_or_default().to_owned();
        Self {
            status: StatusCode::BAD_REQUEST,
            message: one_line,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}
