//! The dashboard service of `examples/dashboard_server` over real HTTP on
//! loopback, against a real PostgreSQL: JSON, Server-Sent Events, 400s,
//! many concurrent requests checked against verify.sql, and metrics.
//!
//! Seeds the schema `fanout_test` (20 tenants) as `tests/postgres` does.
//! `scripts/test` starts a throw-away PostgreSQL and sets `DATABASE_URL`;
//! without it this test binary starts its own (see `tests/pg`). They never
//! skip.

#[path = "../examples/dashboard_server/app.rs"]
mod app;
#[path = "../examples/dashboard/db.rs"]
mod db;
mod pg;
#[path = "../examples/dashboard/seed.rs"]
mod seed;
#[path = "../examples/dashboard/sql.rs"]
mod sql;
#[allow(dead_code)] // shared with the examples and tests/postgres
#[path = "../examples/dashboard/widgets.rs"]
mod widgets;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use pg::{TENANTS, seeded};
use widgets::Mode;

/// No request of these tests should come near this.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

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

/// Serves the example's router on 127.0.0.1 (a free port) in this test's
/// runtime, with a pool of 10, and `slow` widgets sleeping past `timeout`.
async fn serve(application: &str, slow: &[&str], timeout: Duration, deadline: Duration) -> Server {
    let config = seeded(application).await;
    let pool = db::pool(config, 10, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    // No standing-queue rule: these tests check values and protocol, and
    // some load the service far past its pool on purpose; shedding under
    // overload is tested in virtual time (tests/fair.rs).
    let limits = app::Limits {
        timeout,
        deadline,
        standing_queue: None,
    };
    let mode = |name: &str| {
        if slow.contains(&name) {
            Mode::Slow
        } else {
            Mode::Normal
        }
    };
    let router = app::router(app::AppState::new(pool, limits, mode, metrics()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Server { address }
}

/// Held by the tests that time things and the one that loads the
/// database, so that the load does not skew the timings (the tests of a
/// binary run in parallel).
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default limits of the example: 2 s per query, 3 s per dashboard.
async fn serve_default(application: &str) -> Server {
    serve(
        application,
        &[],
        Duration::from_secs(2),
        Duration::from_secs(3),
    )
    .await
}

struct Server {
    address: SocketAddr,
}

/// A response, and when each of its body's chunks arrived.
struct Response {
    status: StatusCode,
    content_type: String,
    chunks: Vec<(Instant, Bytes)>,
}

impl Response {
    fn text(&self) -> String {
        let bytes: Vec<u8> = self.chunks.iter().flat_map(|(_, b)| b.to_vec()).collect();
        String::from_utf8(bytes).expect("a UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as Server-Sent Events: `(arrival, event, data)` for each,
    /// comments (keep-alives) left out.
    fn events(&self) -> Vec<(Instant, String, Value)> {
        let mut events = Vec::new();
        let mut buffer = String::new();
        for (arrived, chunk) in &self.chunks {
            buffer.push_str(std::str::from_utf8(chunk).expect("UTF-8 events"));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut event, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim().to_owned();
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.trim_start());
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"));
                    events.push((*arrived, event, data));
                }
            }
        }
        assert!(buffer.trim().is_empty(), "an unfinished event: {buffer:?}");
        events
    }
}

impl Server {
    /// `GET path` on a connection of its own; reads the whole body, noting
    /// when each chunk arrived.
    async fn get(&self, path: &str) -> Response {
        tokio::time::timeout(REQUEST_LIMIT, self.get_unlimited(path))
            .await
            .unwrap_or_else(|_| panic!("GET {path} took over {REQUEST_LIMIT:?}"))
    }

    async fn get_unlimited(&self, path: &str) -> Response {
        let stream = TcpStream::connect(self.address).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, self.address.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let mut body = response.into_body();
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
            if let Ok(data) = frame.into_data() {
                chunks.push((Instant::now(), data));
            }
        }
        Response {
            status,
            content_type,
            chunks,
        }
    }
}

/// A dashboard document's widgets by name: `(source, value)`.
fn widgets_of(dashboard: &Value) -> Vec<(String, String, Value)> {
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

fn tenant(n: u32) -> String {
    seed::tenant_id(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_json_has_every_widget_fresh_in_dashboard_order() {
    let server = serve_default("fanout-test-server-json").await;
    let response = server.get("/tenants/tenant-0003/dashboard").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(response.content_type.starts_with("application/json"));
    let dashboard = response.json();
    assert_eq!(dashboard["tenant"], "tenant-0003");
    assert!(dashboard["elapsed_ms"].as_f64().unwrap() > 0.0);
    let widgets = widgets_of(&dashboard);
    let names: Vec<&str> = widgets.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, widgets::NAMES);
    for (widget, raw) in widgets.iter().zip(dashboard["widgets"].as_array().unwrap()) {
        assert_eq!(widget.1, "fresh", "{raw}");
        assert_eq!(raw["detail"], "fresh");
        assert!(raw["elapsed_ms"].as_f64().unwrap() > 0.0, "{raw}");
    }

    let some = server
        .get("/tenants/tenant-0003/dashboard?widgets=arrears,child_count")
        .await;
    assert_eq!(some.status, StatusCode::OK, "{}", some.text());
    let names: Vec<String> = widgets_of(&some.json())
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, ["arrears", "child_count"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_fast_widgets_before_a_slow_one() {
    let _alone = TIMING.lock().await;
    let timeout = Duration::from_millis(300);
    let server = serve(
        "fanout-test-server-slow",
        &["arrears"],
        timeout,
        Duration::from_secs(3),
    )
    .await;
    // Open the pool's connections first, so the measured stream times
    // queries, not connecting.
    let warm = server
        .get("/tenants/tenant-0001/dashboard?widgets=total_revenue,outstanding,child_count,invoice_stats,recent_payments")
        .await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.text());

    let started = Instant::now();
    let response = server.get("/tenants/tenant-0001/dashboard/stream").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(
        response.content_type.starts_with("text/event-stream"),
        "{}",
        response.content_type
    );
    let events = response.events();
    let kinds: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        kinds,
        ["widget"; 6]
            .iter()
            .chain(&["done"])
            .copied()
            .collect::<Vec<_>>()
    );

    let (slow_at, _, slow) = &events[5];
    assert_eq!(
        slow["name"], "arrears",
        "the slow widget comes last: {kinds:?}"
    );
    assert_eq!(slow["source"], "timed_out", "{slow}");
    assert_eq!(slow["detail"], "fallback (timed out)", "{slow}");
    assert_eq!(slow["value"], json!([]), "its fallback: no arrears");
    assert!(slow["elapsed_ms"].as_f64().unwrap() >= 300.0, "{slow}");
    assert!(slow_at.duration_since(started) >= timeout);

    for (arrived, _, fast) in &events[..5] {
        assert_eq!(fast["source"], "fresh", "{fast}");
        // Painted while the slow widget still ran: well before its timeout.
        assert!(
            *arrived + Duration::from_millis(100) < *slow_at,
            "{} arrived {:?} after the start, the slow widget {:?}",
            fast["name"],
            arrived.duration_since(started),
            slow_at.duration_since(started)
        );
    }
    let mut names: Vec<&str> = events[..5]
        .iter()
        .map(|(_, _, w)| w["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut fast_names = widgets::NAMES[..5].to_vec();
    fast_names.sort_unstable();
    assert_eq!(names, fast_names);
    let done = &events[6].2;
    assert!(done["elapsed_ms"].as_f64().unwrap() >= 300.0, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_stream_agree() {
    let server = serve_default("fanout-test-server-agree").await;
    let path = "/tenants/tenant-0007/dashboard";
    let json_page = server.get(path).await;
    assert_eq!(json_page.status, StatusCode::OK, "{}", json_page.text());
    let mut from_json = widgets_of(&json_page.json());

    let streamed = server.get(&format!("{path}/stream")).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text());
    let events = streamed.events();
    assert_eq!(events.last().map(|(_, e, _)| e.as_str()), Some("done"));
    let mut from_stream: Vec<(String, String, Value)> = events
        .iter()
        .filter(|(_, e, _)| e == "widget")
        .map(|(_, _, w)| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["source"].as_str().unwrap().to_owned(),
                w["value"].clone(),
            )
        })
        .collect();
    from_json.sort_by(|a, b| a.0.cmp(&b.0));
    from_stream.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(from_json.len(), 6);
    assert!(from_json.iter().all(|(_, source, _)| source == "fresh"));
    assert_eq!(from_json, from_stream);

    // ?widgets= works on the stream too, and only those run.
    let two = server
        .get(&format!("{path}/stream?widgets=child_count,total_revenue"))
        .await;
    let names: Vec<String> = two
        .events()
        .iter()
        .filter(|(_, e, _)| e == "widget")
        .map(|(_, _, w)| w["name"].as_str().unwrap().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["child_count", "total_revenue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_a_one_line_error() {
    let server = serve_default("fanout-test-server-400").await;
    let cases = [
        ("/tenants/bad%20id/dashboard", "tenant id has ' ' at byte 3"),
        (
            "/tenants/bad%20id/dashboard/stream",
            "tenant id has ' ' at byte 3",
        ),
        (
            "/tenants/tenant-0001/dashboard?widgets=child_count,revenue",
            "unknown widget \"revenue\"",
        ),
        (
            "/tenants/tenant-0001/dashboard/stream?widgets=revenue",
            "unknown widget \"revenue\"",
        ),
        (
            "/tenants/tenant-0001/dashboard?widgets=arrears,arrears",
            "widget \"arrears\" appears twice",
        ),
        (
            "/tenants/tenant-0001/dashboard?widgets=",
            "no widgets selected",
        ),
        (
            "/tenants/tenant-0001/dashboard/stream?widgets=",
            "no widgets selected",
        ),
    ];
    for (path, expected) in cases {
        let response = server.get(path).await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            response.text()
        );
        assert!(
            response.content_type.starts_with("application/json"),
            "{path}"
        );
        let error = response.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no error field: {}", response.text()))
            .to_owned();
        assert!(
            error.contains(expected),
            "{path}: {error:?} lacks {expected:?}"
        );
        assert!(!error.contains('\n'), "{path}: {error:?} is not one line");
    }
    // A valid tenant outside the seed just has nothing: zeros, not an error.
    let unknown = server.get("/tenants/tenant-9999/dashboard").await;
    assert_eq!(unknown.status, StatusCode::OK, "{}", unknown.text());
    let widgets = widgets_of(&unknown.json());
    assert!(widgets.iter().all(|(_, source, _)| source == "fresh"));
    assert_eq!(widgets[2], ("child_count".into(), "fresh".into(), json!(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_every_tenant_match_verify_sql() {
    let _alone = TIMING.lock().await;
    // 1200 queries through 10 connections: limits far above what they
    // take, so that only a wrong value or a failure fails the test.
    let server = serve(
        "fanout-test-server-load",
        &[],
        Duration::from_secs(20),
        Duration::from_secs(40),
    )
    .await;

    // The expected values, computed independently by verify.sql and
    // serialized as the service serializes its own.
    let client = db::connect(&seeded("fanout-test-server-verify").await)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut expected = Vec::new();
    for n in 1..=TENANTS {
        let id = tenant(n);
        let rows = async |name: &'static str| {
            let statement = sql::named(sql::VERIFY, name).expect("verify.sql names every widget");
            client
                .query(statement, &[&id.as_str()])
                .await
                .unwrap_or_else(|e| panic!("verify {name}: {}", seed::describe(&e)))
        };
        let values = [
            (
                "total_revenue",
                serde_json::to_value(widgets::decode_cents(&rows("total_revenue").await).unwrap()),
            ),
            (
                "outstanding",
                serde_json::to_value(widgets::decode_cents(&rows("outstanding").await).unwrap()),
            ),
            (
                "child_count",
                serde_json::to_value(widgets::decode_count(&rows("child_count").await).unwrap()),
            ),
            (
                "invoice_stats",
                serde_json::to_value(
                    widgets::decode_invoice_stats(&rows("invoice_stats").await).unwrap(),
                ),
            ),
            (
                "recent_payments",
                serde_json::to_value(
                    widgets::decode_recent_payments(&rows("recent_payments").await).unwrap(),
                ),
            ),
            (
                "arrears",
                serde_json::to_value(widgets::decode_arrears(&rows("arrears").await).unwrap()),
            ),
        ]
        .map(|(name, value)| (name, value.unwrap()));
        expected.push(values);
    }
    drop(client);
    assert!(
        expected.iter().any(|v| v[2].1 != json!(0)),
        "the seed has children"
    );

    let requests = (0..200_u32).map(|i| {
        let n = i % TENANTS + 1;
        let address = server.address;
        tokio::spawn(async move {
            let server = Server { address };
            (
                n,
                server
                    .get(&format!("/tenants/{}/dashboard", tenant(n)))
                    .await,
            )
        })
    });
    let requests: Vec<_> = requests.collect();
    for request in requests {
        let (n, response) = request.await.unwrap();
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let dashboard = response.json();
        assert_eq!(dashboard["tenant"], tenant(n));
        let widgets = widgets_of(&dashboard);
        assert_eq!(widgets.len(), 6);
        for (name, source, _) in &widgets {
            assert_eq!(source, "fresh", "{}: {name}", tenant(n));
        }
        for (name, value) in &expected[n as usize - 1] {
            let (_, _, got) = widgets.iter().find(|(w, _, _)| w == name).unwrap();
            assert_eq!(got, value, "{}: {name}", tenant(n));
        }
    }
}

/// `fanout_query_outcomes_total{query=NAME,outcome=fresh}` in a scrape; 0
/// when absent.
fn fresh_count(scrape: &str, query: &str) -> u64 {
    scrape
        .lines()
        .filter(|line| line.starts_with("fanout_query_outcomes_total{"))
        .filter(|line| line.contains(&format!("query=\"{query}\"")))
        .filter(|line| line.contains("outcome=\"fresh\""))
        .map(|line| {
            let value = line.rsplit(' ').next().unwrap();
            value
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{line:?}: {e}"))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_query_outcomes() {
    let server = serve_default("fanout-test-server-metrics").await;
    let before = server.get("/metrics").await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(before.content_type.starts_with("text/plain"));
    let before = before.text();

    let dashboard = server
        .get("/tenants/tenant-0002/dashboard?widgets=child_count,invoice_stats")
        .await;
    assert_eq!(dashboard.status, StatusCode::OK, "{}", dashboard.text());

    let after = server.get("/metrics").await.text();
    assert!(
        after.contains("# TYPE fanout_query_outcomes_total counter"),
        "{after}"
    );
    // Other tests run dashboards at the same time: counters only grow.
    for query in ["child_count", "invoice_stats"] {
        assert!(
            fresh_count(&after, query) > fresh_count(&before, query),
            "{query}: before\n{before}\nafter\n{after}"
        );
    }
    assert!(after.contains("fanout_query_duration_seconds"), "{after}");
    assert!(after.contains("fanout_fan_out_duration_seconds"), "{after}");
    // The server's fair limiter: every dashboard joins its line.
    assert!(after.contains("fanout_queue_wait_seconds"), "{after}");
    assert!(after.contains("fanout_queue_length"), "{after}");
}
