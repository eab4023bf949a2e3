//! The dashboard service of `examples/dashboard_server` over real HTTP and
//! WebSocket on loopback, against a real PostgreSQL: JSON, Server-Sent
//! Events, authentication, errors, live updates from committed payments,
//! limits and several instances; and the dashboard page in headless
//! Chromium (browser.rs).
//!
//! Each server runs on a runtime of its own thread, as a process would:
//! stopping it ends every task and connection it had, so a test can
//! restart it. `scripts/test` starts a throw-away PostgreSQL and sets
//! `DATABASE_URL`.

#[path = "../../examples/dashboard_server/app.rs"]
mod app;
#[path = "../../examples/dashboard_server/auth.rs"]
mod auth;
#[path = "../../examples/dashboard/db.rs"]
mod db;
#[path = "../../examples/dashboard_server/error.rs"]
mod error;
#[allow(dead_code)] // the run counts are the dashboard example's
#[path = "../../examples/dashboard/layers.rs"]
mod layers;
#[path = "../pg/mod.rs"]
mod pg;
#[path = "../../examples/dashboard/seed.rs"]
mod seed;
#[path = "../../examples/dashboard/sql.rs"]
mod sql;
#[allow(dead_code)] // shared with the examples and tests/postgres
#[path = "../../examples/dashboard/widgets.rs"]
mod widgets;
#[allow(dead_code)]
#[path = "../../examples/dashboard/writer.rs"]
mod writer;

mod auth_and_errors;
mod browser;
mod json;
mod live;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fanout::cache::{CachePolicy, QueryCache};
use fanout::live::ChangeFeed;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_postgres::Config;

use widgets::Mode;

/// No request of these tests should come near this.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// The secret the test servers sign with.
pub const SECRET: &[u8] = b"fanout-tests-secret-0123456789";
/// The triggers' channel (examples/dashboard/notify.sql).
const CHANNEL: &str = "fanout_changes";

/// The global metrics recorder: a process has one, so every test shares it.
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|e| panic!("installing the metrics recorder: {e}"))
        })
        .clone()
}

/// Held by the tests that time things and the one that loads the
/// database, so that the load does not skew the timings (the tests of a
/// binary run in parallel).
pub static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a test server runs.
#[derive(Clone)]
pub struct Options {
    pub slow: Vec<&'static str>,
    pub broken: Vec<&'static str>,
    pub timeout: Duration,
    pub deadline: Duration,
    pub cache: bool,
    pub max_connections: usize,
    pub ping_every: Duration,
    /// The database: the shared seeded schema (None), or a schema of the
    /// test's own with 3 tenants, for tests that write.
    pub schema: Option<&'static str>,
    /// A port to listen on (a restarted server's); any free one if None.
    pub port: Option<u16>,
    /// With `schema`, a database of the test's own in the same cluster
    /// (created when missing), for a test whose payments must reach no
    /// other test's server: every schema's triggers notify one channel,
    /// and a NOTIFY stays inside its database.
    pub database: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            slow: Vec::new(),
            broken: Vec::new(),
            timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(3),
            cache: false,
            max_connections: 1000,
            ping_every: Duration::from_secs(30),
            schema: None,
            port: None,
            database: None,
        }
    }
}

/// A running server: its address and state, on a runtime of its own.
pub struct Server {
    pub address: SocketAddr,
    pub state: Arc<app::AppState>,
    pub config: Config,
    /// The server's runtime, for counting its tasks.
    pub runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The database config for `options` (seeding it), named `application`.
pub async fn database(application: &str, options: &Options) -> Config {
    let config = match options.schema {
        None => pg::seeded(application).await,
        Some(schema) => match options.database {
            None => pg::seeded_at(&pg::database_url(), schema, 3, application).await,
            Some(name) => own_database(name, schema, application).await,
        },
    };
    let client = db::connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
    client
        .batch_execute(include_str!("../../examples/dashboard/notify.sql"))
        .await
        .unwrap_or_else(|e| panic!("notify.sql: {}", seed::describe(&e)));
    config
}

/// `schema` with 3 tenants in the database `name` of the test cluster,
/// created when missing.
async fn own_database(name: &str, schema: &str, application: &str) -> Config {
    let url = pg::database_url();
    let admin = db::config(&url, "public").unwrap_or_else(|e| panic!("{e}"));
    let admin = db::connect(&admin).await.unwrap_or_else(|e| panic!("{e}"));
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap_or_else(|e| panic!("looking for database {name}: {}", seed::describe(&e)))
        .is_some();
    if !exists {
        let created = admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await;
        // Another process may have created it since we looked.
        if let Err(e) = created
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        {
            panic!("creating database {name}: {}", seed::describe(&e));
        }
    }
    let mut config = db::config(&url, schema).unwrap_or_else(|e| panic!("{e}"));
    config.dbname(name);
    let client = db::connect(&config).await.unwrap_or_else(|e| panic!("{e}"));
    seed::ensure_seeded(&client, schema, 3, false)
        .await
        .unwrap_or_else(|e| panic!("seeding {name}.{schema} failed: {e}"));
    config.application_name(application);
    config
}

/// Serves the example's router with `options` on 127.0.0.1, with a pool of
/// 10 and the change feed listening.
pub async fn serve(application: &str, options: Options) -> Server {
    let config = database(application, &options).await;
    let (ready, started) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_config = config.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let config = server_config;
            let pool = db::pool(config.clone(), 10, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{e}"));
            // No standing-queue rule: these tests check values and protocol,
            // and some load the service far past its pool on purpose;
            // shedding under overload is tested in virtual time.
            let limits = app::Limits {
                timeout: options.timeout,
                deadline: options.deadline,
                standing_queue: None,
            };
            let (slow, broken) = (options.slow.clone(), options.broken.clone());
            let mode = move |name: &str| {
                if slow.contains(&name) {
                    Mode::Slow
                } else if broken.contains(&name) {
                    Mode::Broken
                } else {
                    Mode::Normal
                }
            };
            let caching = options.cache.then(|| {
                let policy = CachePolicy::ttl(Duration::from_secs(30))
                    .stale_if_error(Duration::from_secs(600));
                layers::Caching::InProcess(QueryCache::new(10_000), policy)
            });
            let app_options = app::Options {
                auth: auth::Auth::new(SECRET),
                caching,
                max_connections: options.max_connections,
                ping_every: options.ping_every,
            };
            let state = Arc::new(app::AppState::new(
                pool,
                limits,
                mode,
                metrics(),
                app_options,
            ));
            let mut feed_config = config.clone();
            feed_config.application_name("fanout-test-feed");
            let feed = ChangeFeed::new(feed_config, CHANNEL)
                .unwrap()
                .spawn(state.live())
                .unwrap();
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port.unwrap_or(0)))
                .await
                .unwrap();
            let address = listener.local_addr().unwrap();
            while !feed.is_listening() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let router = app::router(Arc::clone(&state));
            let handle = tokio::runtime::Handle::current();
            ready.send((address, state, handle)).ok().unwrap();
            tokio::select! {
                served = axum::serve(listener, router) => served.unwrap(),
                _ = stopped => {}
            }
            drop(feed);
        });
        // Dropping the runtime ends every task it ran: the connections too.
        runtime.shutdown_background();
    });
    let (address, state, runtime) = started.await.expect("the server starts");
    Server {
        address,
        state,
        config,
        runtime,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// The default limits of the example: 2 s per query, 3 s per dashboard.
pub async fn serve_default(application: &str) -> Server {
    serve(application, Options::default()).await
}

/// A valid token for `tenant`, an hour long.
pub fn token(tenant: &str) -> String {
    auth::Auth::new(SECRET).token("test-user", tenant, Duration::from_secs(3600))
}

/// A response, and when each of its body's chunks arrived.
pub struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: hyper::HeaderMap,
    pub chunks: Vec<(Instant, Bytes)>,
}

impl Response {
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
        String::from_utf8(bytes).expect("a UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as Server-Sent Events: `(arrival, event, data)` for each,
    /// comments (keep-alives) left out.
    pub fn events(&self) -> Vec<(Instant, String, Value)> {
        parse_events(&self.chunks)
            .into_iter()
            .map(|(at, event, _, data)| (at, event, data))
            .collect()
    }
}

/// Server-Sent Events in `chunks`: `(arrival, event, id, data)`.
pub fn parse_events(chunks: &[(Instant, Bytes)]) -> Vec<(Instant, String, String, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    for (arrived, chunk) in chunks {
        buffer.push_str(std::str::from_utf8(chunk).expect("UTF-8 events"));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut id, mut data) =
                (String::from("message"), String::new(), String::new());
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(text) = line.strip_prefix("id:") {
                    id = text.trim().to_owned();
                } else if let Some(text) = line.strip_prefix("data:") {
                    data.push_str(text.trim_start());
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
                events.push((*arrived, event, id, data));
            }
        }
    }
    events
}

impl Server {
    /// A client of this server with `tenant`'s token.
    pub fn client(&self, tenant: &str) -> Client {
        Client {
            address: self.address,
            token: Some(token(tenant)),
        }
    }

    /// A client without a token.
    pub fn anonymous(&self) -> Client {
        Client {
            address: self.address,
            token: None,
        }
    }

    /// `GET path` with a token for the path's tenant (`/tenants/{id}/...`,
    /// percent-decoded), or none for other paths.
    pub async fn get(&self, path: &str) -> Response {
        let client = match path.strip_prefix("/tenants/") {
            Some(rest) => {
                let id = rest.split(['/', '?']).next().unwrap_or_default();
                let id = percent_decode(id);
                self.client(&id)
            }
            None => self.anonymous(),
        };
        client.get(path).await
    }

    /// Live connections open now.
    pub fn live_connections(&self) -> usize {
        self.state.live_connections()
    }

    /// Stops the server as a process exit would: every task and connection
    /// ends.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP client of one server, with or without a token.
#[derive(Clone)]
pub struct Client {
    pub address: SocketAddr,
    pub token: Option<String>,
}

impl Client {
    /// `GET path` on a connection of its own; reads the whole body, noting
    /// when each chunk arrived.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, &[]).await
    }

    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
        tokio::time::timeout(
            REQUEST_LIMIT,
            self.request_unlimited(method, path, headers, None),
        )
        .await
        .unwrap_or_else(|_| panic!("GET {path} took over {REQUEST_LIMIT:?}"))
    }

    /// The response's head and the chunks that arrive within `limit`, for
    /// endless streams.
    pub async fn get_for(&self, path: &str, headers: &[(&str, &str)], limit: Duration) -> Response {
        self.request_unlimited(Method::GET, path, headers, Some(limit))
            .await
    }

    async fn request_unlimited(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        limit: Option<Duration>,
    ) -> Response {
        let stream = TcpStream::connect(self.address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        // Each request has a connection of its own, closed when it is read:
        // an idle connection kept open would hold a server task.
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.address.to_string());
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut body = response.into_body();
        let mut chunks = Vec::new();
        let until = limit.map(|limit| tokio::time::Instant::now() + limit);
        loop {
            let frame = match until {
                None => body.frame().await,
                Some(until) => match tokio::time::timeout_at(until, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => break,
                },
            };
            let Some(frame) = frame else { break };
            let frame = frame.unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
            if let Ok(data) = frame.into_data() {
                chunks.push((Instant::now(), data));
            }
        }
        drop(body);
        driver.abort();
        Response {
            status,
            content_type,
            headers,
            chunks,
        }
    }
}

/// A dashboard document's widgets: `(name, source, value)`.
pub fn widgets_of(dashboard: &Value) -> Vec<(String, String, Value)> {
    dashboard["widgets"]
        .as_array()
        .unwrap_or_else(|| panic!("no widgets: {dashboard}"))
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["source"].as_str().unwrap().to_owned(),
                w["value"].clone(),
            )
        })
        .collect()
}

/// `%XX` escapes decoded (enough for the ids these tests use).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn tenant(n: u32) -> String {
    seed::tenant_id(n)
}
