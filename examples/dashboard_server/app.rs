//! The dashboard service: its state and its routes, apart from `main` so
//! that the tests serve the same router.
//!
//! - `GET /`: the dashboard page (sign in with a token, widgets update
//!   live).
//! - `GET /tenants/{id}/dashboard`: every widget's value, source and
//!   latency as one JSON document, once the last widget has settled.
//!   `?widgets=a,b,c` picks widgets; `?deadline_ms=N` shortens the
//!   deadline (up to the server's).
//! - `GET /tenants/{id}/dashboard/stream`: the same widgets as Server-Sent
//!   Events, one `widget` event each the moment it settles, then `done`.
//! - `GET /tenants/{id}/live`: a WebSocket of the live dashboard: a
//!   `snapshot`, then `widgets` updates and domain events, as JSON text
//!   messages; pings every 30 s, closed when a ping goes unanswered.
//!   `?version=V` resumes after a reconnect.
//! - `GET /tenants/{id}/live/events`: the same as Server-Sent Events, each
//!   with its version as `id:` (so `Last-Event-ID` resumes) and its type
//!   as `event:`.
//! - `GET /metrics`: the `fanout_*` metrics in the Prometheus text format.
//!
//! Every dashboard route needs a bearer JWT whose `tenant` claim is the
//! path's tenant (`Authorization: Bearer ...`; the live routes also take
//! `?access_token=`, since a browser's `EventSource` and `WebSocket`
//! cannot set headers). Every error is JSON, `{"error": "..."}`: 400 for
//! bad input, 401 without a valid token, 403 for another tenant's, 404
//! for an unknown tenant or route, 405 for another method, 503 past the
//! live connection limit. A widget that fails shows its fallback (or its
//! last good value), marked, and the page is still a 200; its error's text
//! is in the logs, not in the response.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use fanout::dynamic::{Widget, WidgetRegistry};
use fanout::live::{Live, Subscription, Update, Version, WidgetValue};
use fanout::{DashboardQuery, FairLimiter, FanOut, Outcome, Source, TenantId};
use futures_util::{SinkExt, Stream, StreamExt, stream};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::auth::{self, Auth};
use crate::error::ApiError;
use crate::layers::{self, Caching};
use crate::widgets::{self, Mode};

/// How long each widget query and the whole dashboard may take, and how
/// long a dashboard may wait for its first permit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Each query's timeout.
    pub timeout: Duration,
    /// The whole dashboard's deadline, and the most `?deadline_ms=` gets.
    pub deadline: Duration,
    /// The fair limiter's standing-queue rule, `(target, interval)`
    /// (see `FairLimiter::standing_queue`); `None` to wait as long as the
    /// deadline allows.
    pub standing_queue: Option<(Duration, Duration)>,
}

/// What the service runs with besides its pool and limits.
pub struct Options {
    /// Signs and verifies the bearer tokens.
    pub auth: Auth,
    /// The widgets' cache; `None` for `--no-cache`.
    pub caching: Option<Caching>,
    /// Open live connections (WebSocket and SSE together) at most.
    pub max_connections: usize,
    /// How often a WebSocket is pinged; one unanswered ping closes it.
    pub ping_every: Duration,
}

/// What every request shares: one fan-out configuration whose limiter is
/// sized to the pool, the widgets by name, the live dashboards, the known
/// tenants and the metrics.
pub struct AppState {
    fan_out: FanOut,
    max_deadline: Duration,
    pool: Pool,
    registry: WidgetRegistry,
    live: Live,
    auth: Auth,
    known: moka::future::Cache<TenantId, ()>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    ping_every: Duration,
    metrics: PrometheusHandle,
}

impl AppState {
    /// The six widgets on `pool`, each behaving as `mode` says for its
    /// name, under `limits`; one limiter of as many permits as the pool
    /// has connections serves every request and every live refresh, so a
    /// query never waits for a connection while its timeout runs. The
    /// limiter is fair between tenants and sheds under overload
    /// (`limits.standing_queue`).
    pub fn new(
        pool: Pool,
        limits: Limits,
        mode: impl Fn(&str) -> Mode,
        metrics: PrometheusHandle,
        options: Options,
    ) -> Self {
        let mut limiter = FairLimiter::new(pool.status().max_size);
        if let Some((target, interval)) = limits.standing_queue {
            limiter = limiter.standing_queue(target, interval);
        }
        let fan_out = FanOut::new()
            .timeout(limits.timeout)
            .deadline(limits.deadline)
            .fair_limiter(limiter);
        let caching = options.caching;
        let (revenue, outstanding, children, invoices, payments, arrears) =
            layers::layer(widgets::dashboard(&pool, mode), caching.as_ref());
        let mut registry = WidgetRegistry::new();
        registry
            .register(revenue)
            .and_then(|r| r.register(outstanding))
            .and_then(|r| r.register(children))
            .and_then(|r| r.register(invoices))
            .and_then(|r| r.register(payments))
            .and_then(|r| r.register(arrears))
            .expect("the six widgets have different names");
        let mut live = Live::builder(fan_out.clone(), registry.clone());
        match caching {
            None => {}
            Some(Caching::InProcess(cache, _)) => live = live.cache(cache),
            #[cfg(feature = "redis")]
            Some(Caching::Shared(cache, _)) => {
                // Every instance hears every change (PostgreSQL is the
                // bus), so each moves the tenant on in Redis too: a few
                // INCRs, and no instance depends on another to do it.
                live = live.on_change(move |tenant| {
                    let (cache, tenant) = (cache.clone(), tenant.clone());
                    tokio::spawn(async move {
                        if let Err(error) = cache.invalidate_tenant(&tenant).await {
                            tracing::warn!(%tenant, %error, "cannot invalidate the shared cache");
                        }
                    });
                });
            }
        }
        Self {
            fan_out,
            max_deadline: limits.deadline,
            pool,
            registry,
            live: live.build(),
            auth: options.auth,
            known: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            connections: Arc::new(Semaphore::new(options.max_connections)),
            max_connections: options.max_connections,
            ping_every: options.ping_every,
            metrics,
        }
    }

    /// The live dashboards, for the change feed to notify.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Live connections (WebSocket and SSE) open now.
    #[allow(dead_code)] // for the tests and the operator's curiosity
    pub fn live_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// The pool the widgets query.
    #[allow(dead_code)] // for callers that want pool statistics
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The tenant of a request for `id` with `token`: 401 without a valid
    /// token, 403 with another tenant's, 400 for a bad id, 404 for a
    /// tenant that does not exist.
    async fn authorize(&self, id: &str, token: Option<&str>) -> Result<TenantId, ApiError> {
        self.auth.authorize(token, id)?;
        let tenant = TenantId::new(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if self.known.contains_key(&tenant) {
            return Ok(tenant);
        }
        // Only tenants that exist are remembered, for a minute: a tenant
        // created since is found at once, and the lookup is one primary
        // key probe.
        let client = self.pool.get().await.map_err(|error| {
            tracing::warn!(%error, "tenant lookup: no connection");
            ApiError::unavailable("the database is unavailable")
        })?;
        let found = client
            .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&tenant.as_str()])
            .await
            .map_err(|error| {
                tracing::warn!(%error, "tenant lookup failed");
                ApiError::unavailable("the database is unavailable")
            })?;
        if found.is_none() {
            return Err(ApiError::not_found(format!("no tenant {tenant}")));
        }
        self.known.insert(tenant.clone(), ()).await;
        Ok(tenant)
    }

    /// The widgets `widgets` names, in its order; all six in dashboard
    /// order without it.
    fn select(&self, widgets: Option<&str>) -> Result<Vec<Widget>, ApiError> {
        let Some(list) = widgets else {
            return Ok(self
                .registry
                .select(widgets::NAMES)
                .expect("the six widgets"));
        };
        if list.trim().is_empty() {
            return Err(ApiError::bad_request(
                "`widgets` is empty: name at least one widget",
            ));
        }
        if list.split(',').any(|name| name.trim().is_empty()) {
            return Err(ApiError::bad_request(format!(
                "`widgets` has an empty entry in {list:?}: separate names with single commas"
            )));
        }
        self.registry
            .select(list.split(','))
            .map_err(|e| ApiError::bad_request(format!("widgets: {e}")))
    }
}

/// The service's routes on `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/tenants/{id}/dashboard", get(dashboard))
        .route("/tenants/{id}/dashboard/stream", get(dashboard_stream))
        .route("/tenants/{id}/live", get(live_socket))
        .route("/tenants/{id}/live/events", get(live_events))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

type Shared = State<Arc<AppState>>;
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// A request's query string, each parameter at most once, and only the
/// ones its route takes.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: Pairs, allowed: &[&str]) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let mut params = BTreeMap::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{}`; this route takes {}",
                    key.chars().take(64).collect::<String>(),
                    allowed.join(", ")
                )));
            }
            if params.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "`{key}` is given twice; give it once (widgets as one comma-separated list)"
                )));
            }
        }
        Ok(Self(params))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// One widget as the JSON page, the SSE `widget` events and the live
/// updates show it.
#[derive(Debug, Serialize)]
struct WidgetJson {
    name: &'static str,
    value: Value,
    /// `fresh`, `cached`, `refreshing`, `stale`, or for a fallback why:
    /// `error`, `timed_out`, `deadline_exceeded`, `panicked`, `shed`, ...
    source: &'static str,
    /// A public description: `fresh`, `cached (2.0 s old)`,
    /// `fallback (timed out)`, `stale (40.0 s old; query failed)`.
    detail: String,
    elapsed_ms: f64,
}

impl WidgetJson {
    fn new(name: &'static str, outcome: Outcome<Value>) -> Self {
        Self {
            name,
            source: outcome.source.label(),
            detail: public_detail(&outcome.source),
            elapsed_ms: millis(outcome.elapsed),
            value: outcome.value,
        }
    }

    fn live(widget: &WidgetValue) -> Self {
        let age = widget
            .age_ms
            .map(|ms| ms as f64 / 1000.0)
            .unwrap_or_default();
        let cause = widget.cause.map(public_cause).unwrap_or_default();
        let detail = match widget.source {
            "cached" => format!("cached ({age:.1} s old)"),
            "refreshing" => format!("cached ({age:.1} s old, refreshing)"),
            "stale" => format!("stale ({age:.1} s old; {cause})"),
            "fallback" => format!("fallback ({cause})"),
            other => other.to_owned(),
        };
        Self {
            name: widget.name,
            value: widget.value.clone(),
            source: match widget.source {
                "fallback" => widget.cause.unwrap_or("error"),
                other => other,
            },
            detail,
            elapsed_ms: widget.elapsed_ms,
        }
    }
}

/// What a client may know of a failure: its kind, never its text (which
/// can name tables, hosts or users).
fn public_cause(label: &str) -> &'static str {
    match label {
        "error" => "query failed",
        "timed_out" => "timed out",
        "deadline_exceeded" => "deadline exceeded",
        "panicked" => "internal error",
        "shed" | "limiter_closed" => "overloaded",
        _ => "unavailable",
    }
}

fn public_detail(source: &Source) -> String {
    match source {
        Source::Fresh => "fresh".to_owned(),
        Source::Cached { age } => format!("cached ({:.1} s old)", age.as_secs_f64()),
        Source::Refreshing { age } => {
            format!("cached ({:.1} s old, refreshing)", age.as_secs_f64())
        }
        Source::Stale { age, cause } => format!(
            "stale ({:.1} s old; {})",
            age.as_secs_f64(),
            public_cause(cause.label())
        ),
        Source::Fallback(failure) => format!("fallback ({})", public_cause(failure.label())),
        other => other.label().to_owned(),
    }
}

#[derive(Debug, Serialize)]
struct DashboardJson {
    tenant: String,
    elapsed_ms: f64,
    deadline_ms: u64,
    widgets: Vec<WidgetJson>,
}

#[derive(Debug, Serialize)]
struct DoneJson {
    elapsed_ms: f64,
}

/// A live update as the WebSocket and SSE routes send it: its `type` and
/// `version`, then its widgets (in the JSON page's form) or its event's
/// `data`.
#[derive(Debug, Serialize)]
struct LiveJson {
    #[serde(rename = "type")]
    kind: &'static str,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    widgets: Option<Vec<WidgetJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

fn live_json(update: &Update) -> String {
    let json = LiveJson {
        kind: update.kind(),
        version: update.version().to_string(),
        widgets: match update {
            Update::Event { .. } => None,
            _ => Some(
                update
                    .widgets()
                    .iter()
                    .map(|w| WidgetJson::live(w))
                    .collect(),
            ),
        },
        data: match update {
            Update::Event { event, .. } => Some(event.data.clone()),
            _ => None,
        },
    };
    serde_json::to_string(&json).expect("plain JSON values serialize")
}

/// Milliseconds, to the microsecond.
fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1000.0
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// The tenant, widgets and fan-out a dashboard request asks for.
async fn dashboard_request(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    query: Pairs,
) -> Result<(TenantId, Vec<Widget>, FanOut, Duration), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tenant = state.authorize(&id, auth::bearer(headers)).await?;
    let params = Params::parse(query, &["widgets", "deadline_ms"])?;
    let widgets = state.select(params.get("widgets"))?;
    let deadline = match params.get("deadline_ms") {
        None => state.max_deadline,
        Some(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms).min(state.max_deadline),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`deadline_ms` must be a whole number of milliseconds above 0, not {:?}",
                    ms.chars().take(32).collect::<String>()
                )));
            }
        },
    };
    let fan_out = state.fan_out.clone().deadline(deadline);
    Ok((tenant, widgets, fan_out, deadline))
}

async fn dashboard(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Pairs,
) -> Result<Json<DashboardJson>, ApiError> {
    let (tenant, widgets, fan_out, deadline) =
        dashboard_request(&state, id, &headers, query).await?;
    let names: Vec<&'static str> = widgets.iter().map(|w| w.name()).collect();
    let (outcomes, report) = fan_out.run_with_report(&tenant, widgets).await;
    Ok(Json(DashboardJson {
        tenant: tenant.to_string(),
        elapsed_ms: millis(report.elapsed),
        deadline_ms: deadline.as_millis() as u64,
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
    headers: HeaderMap,
    query: Pairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (tenant, widgets, fan_out, _) = dashboard_request(&state, id, &headers, query).await?;
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

/// A live request's subscription and its connection permit: authorized,
/// within the connection limit, resumed from `resume` when given.
async fn live_request(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    params: &Params,
    resume: Option<Version>,
) -> Result<(Subscription, OwnedSemaphorePermit), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let token = auth::bearer(headers).or(params.get("access_token"));
    let tenant = state.authorize(&id, token).await?;
    let widgets = state.select(params.get("widgets"))?;
    let names: Vec<&'static str> = widgets.iter().map(|w| w.name()).collect();
    let permit = Arc::clone(&state.connections)
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many live connections; try again shortly"))?;
    let page = state
        .live
        .subscribe(&tenant, names)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((
        match resume {
            Some(version) => page.resume_from(version),
            None => page,
        },
        permit,
    ))
}

/// A write that takes longer than this means the client stopped reading:
/// its connection is closed rather than buffered without end.
const SEND_WITHIN: Duration = Duration::from_secs(10);

async fn live_socket(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Pairs,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["widgets", "access_token", "version"])?;
    let resume = match params.get("version") {
        None => None,
        Some(version) => Some(
            version
                .parse::<Version>()
                .map_err(|e| ApiError::bad_request(format!("version: {e}")))?,
        ),
    };
    let (page, permit) = live_request(&state, id, &headers, &params, resume).await?;
    let ping_every = state.ping_every;
    Ok(upgrade
        // Clients send only pongs and a close; what we send is bounded by
        // the write buffer, past which the connection is closed.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_socket(socket, page, permit, ping_every)))
}

async fn serve_socket(
    socket: WebSocket,
    mut page: Subscription,
    _permit: OwnedSemaphorePermit,
    ping_every: Duration,
) {
    let (mut sender, mut receiver) = socket.split();
    let start = tokio::time::Instant::now() + ping_every;
    let mut ping = tokio::time::interval_at(start, ping_every);
    let mut answered = true;
    loop {
        tokio::select! {
            update = page.next() => {
                let text = live_json(&update);
                let sent = tokio::time::timeout(SEND_WITHIN, sender.send(Message::Text(text.into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            _ = ping.tick() => {
                if !answered {
                    let close = CloseFrame { code: 1001, reason: "no answer to ping".into() };
                    let _ = tokio::time::timeout(SEND_WITHIN, sender.send(Message::Close(Some(close)))).await;
                    break;
                }
                answered = false;
                let sent = tokio::time::timeout(SEND_WITHIN, sender.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break;
                }
            }
            message = receiver.next() => match message {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                // Any message shows the client is there.
                Some(Ok(_)) => answered = true,
            },
        }
    }
}

async fn live_events(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Pairs,
) -> Result<Response, ApiError> {
    let params = Params::parse(query, &["widgets", "access_token"])?;
    // A Last-Event-ID that is not a version (another server's, say) is
    // unknown: the client gets a snapshot, as for any unknown version.
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<Version>().ok());
    let (page, permit) = live_request(&state, id, &headers, &params, resume).await?;
    let events = page.into_stream().map(move |update| {
        let _held = &permit;
        Ok::<_, Infallible>(
            Event::default()
                .id(update.version().to_string())
                .event(update.kind())
                .data(live_json(&update)),
        )
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

async fn metrics(State(state): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such route; try GET /, /tenants/{id}/dashboard, /tenants/{id}/dashboard/stream, \
         /tenants/{id}/live, /tenants/{id}/live/events or /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed; every route takes GET",
    )
}
