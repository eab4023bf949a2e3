//! The live routes against committed payments: WebSocket and SSE clients
//! of a tenant get the updated widgets and the event, other tenants'
//! nothing; reconnects after a restart end current; `Last-Event-ID`
//! resumes without duplicates; the connection limit; a client that never
//! reads; connect/disconnect cycles; several instances on one database.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout::TenantId;
use futures_util::StreamExt;
use hyper::StatusCode;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Options, Server, db, serve, tenant, token, writer};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn request(
    address: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut request = format!("ws://{address}{path}")
        .into_client_request()
        .unwrap();
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// A WebSocket to `path`, the token as a header when given.
pub async fn ws_connect(address: SocketAddr, path: &str, bearer: Option<&str>) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(request(address, path, bearer))
        .await
        .unwrap_or_else(|e| panic!("ws {path}: {e}"));
    socket
}

/// The status and body of a refused WebSocket handshake.
pub async fn ws_rejected(
    address: SocketAddr,
    path: &str,
    bearer: Option<String>,
) -> (StatusCode, String) {
    match tokio_tungstenite::connect_async(request(address, path, bearer.as_deref())).await {
        Ok(_) => panic!("ws {path} was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (
                StatusCode::from_u16(response.status().as_u16()).unwrap(),
                body,
            )
        }
        Err(e) => panic!("ws {path}: {e}"),
    }
}

/// The next JSON message within `limit` (pings are answered by the
/// client); `None` on timeout or close.
pub async fn next_json(socket: &mut Socket, limit: Duration) -> Option<Value> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(until, socket.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Reads `socket` until a `widgets` or `snapshot` message shows `widget`
/// at `value`; returns every message read.
async fn until_widget(
    socket: &mut Socket,
    widget: &str,
    value: &Value,
    limit: Duration,
) -> Vec<Value> {
    let until = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let message = next_json(socket, left)
            .await
            .unwrap_or_else(|| panic!("{widget} never reached {value}: {seen:?}"));
        let done = widget_value(&message, widget) == Some(value.clone());
        seen.push(message);
        if done {
            return seen;
        }
    }
}

fn widget_value(message: &Value, widget: &str) -> Option<Value> {
    message["widgets"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == widget)
        .map(|w| w["value"].clone())
}

/// The tenant's `total_revenue` as the service shows it (no cache).
async fn revenue(server: &Server, tenant: &str) -> Value {
    let response = server
        .client(tenant)
        .get(&format!(
            "/tenants/{tenant}/dashboard?widgets=total_revenue"
        ))
        .await;
    response.json()["widgets"][0]["value"].clone()
}

async fn pay(server: &Server, tenant: &str, cents: i64) -> i64 {
    let mut client = db::connect(&server.config).await.unwrap();
    match writer::pay(&mut client, &TenantId::new(tenant).unwrap(), cents)
        .await
        .unwrap()
    {
        writer::Wrote::Payment { amount_cents } => amount_cents,
        other => panic!("{tenant}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_reaches_its_tenants_websocket_and_sse_clients_and_no_one_else() {
    let server = serve(
        "fanout-test-live-payment",
        Options {
            schema: Some("fanout_live_http"),
            ..Options::default()
        },
    )
    .await;
    let (a, b) = (tenant(1), tenant(2));
    let mut ws_a = ws_connect(
        server.address,
        &format!("/tenants/{a}/live"),
        Some(&token(&a)),
    )
    .await;
    let mut ws_b = ws_connect(
        server.address,
        &format!("/tenants/{b}/live?access_token={}", token(&b)),
        None,
    )
    .await;
    let snapshot = next_json(&mut ws_a, Duration::from_secs(10)).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["widgets"].as_array().unwrap().len(), 6);
    assert_eq!(
        next_json(&mut ws_b, Duration::from_secs(10)).await.unwrap()["type"],
        "snapshot"
    );
    let before = widget_value(&snapshot, "total_revenue")
        .unwrap()
        .as_i64()
        .unwrap();

    let sse = |tenant: String| {
        let client = server.anonymous();
        let path = format!(
            "/tenants/{tenant}/live/events?access_token={}",
            token(&tenant)
        );
        tokio::spawn(async move { client.get_for(&path, &[], Duration::from_secs(6)).await })
    };
    let (sse_a, sse_b) = (sse(a.clone()), sse(b.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let paid = pay(&server, &a, 1234).await;
    let committed = Instant::now();
    let seen = until_widget(
        &mut ws_a,
        "total_revenue",
        &Value::from(before + paid),
        Duration::from_secs(5),
    )
    .await;
    let took = committed.elapsed();
    let mut kinds: Vec<String> = seen
        .iter()
        .map(|m| m["type"].as_str().unwrap().to_owned())
        .collect();
    if let Some(more) = next_json(&mut ws_a, Duration::from_secs(1)).await {
        kinds.push(more["type"].as_str().unwrap().to_owned());
    }
    assert!(kinds.contains(&"payment_received".to_owned()), "{kinds:?}");
    assert!(
        took < Duration::from_secs(2),
        "commit to WebSocket took {took:?}"
    );
    for message in &seen {
        assert!(message["version"].is_string(), "{message}");
        if let Some(widgets) = message["widgets"].as_array() {
            for w in widgets {
                for field in ["name", "value", "source", "detail", "elapsed_ms"] {
                    assert!(w.get(field).is_some(), "{field} in {w}");
                }
            }
        }
    }

    let sse_a = sse_a.await.unwrap();
    assert_eq!(sse_a.status, StatusCode::OK);
    assert!(sse_a.content_type.starts_with("text/event-stream"));
    let events = crate::parse_events(&sse_a.chunks);
    assert_eq!(events[0].1, "snapshot");
    assert!(
        events
            .iter()
            .all(|(_, event, id, data)| data["type"] == *event && data["version"] == *id)
    );
    assert!(
        events
            .iter()
            .any(|(_, event, _, _)| event == "payment_received"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(_, _, _, data)| widget_value(data, "total_revenue")
                == Some(Value::from(before + paid))),
        "{events:?}"
    );

    // Tenant B heard nothing: no event, no widget.
    assert!(
        next_json(&mut ws_b, Duration::from_millis(500))
            .await
            .is_none()
    );
    let events_b = crate::parse_events(&sse_b.await.unwrap().chunks);
    assert_eq!(
        events_b.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["snapshot"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_a_reconnecting_client_ends_with_the_current_values() {
    let options = Options {
        schema: Some("fanout_live_restart"),
        ..Options::default()
    };
    let server = serve("fanout-test-live-restart", options.clone()).await;
    let a = tenant(1);
    let path = format!("/tenants/{a}/live");
    let mut socket = ws_connect(server.address, &path, Some(&token(&a))).await;
    let snapshot = next_json(&mut socket, Duration::from_secs(10))
        .await
        .unwrap();
    let version = snapshot["version"].as_str().unwrap().to_owned();
    let port = server.address.port();
    server.stop().await;
    assert!(
        next_json(&mut socket, Duration::from_secs(5))
            .await
            .is_none(),
        "the connection dropped"
    );

    // Written while no server ran: no notification reaches anyone.
    let writer_server = serve(
        "fanout-test-live-restart",
        Options {
            port: None,
            ..options.clone()
        },
    )
    .await;
    let paid = pay(&writer_server, &a, 2222).await;
    writer_server.stop().await;

    let server = serve(
        "fanout-test-live-restart",
        Options {
            port: Some(port),
            ..options
        },
    )
    .await;
    let current = revenue(&server, &a).await;
    assert_eq!(
        current.as_i64().unwrap(),
        widget_value(&snapshot, "total_revenue")
            .unwrap()
            .as_i64()
            .unwrap()
            + paid
    );
    let mut socket = ws_connect(
        server.address,
        &format!("{path}?version={version}"),
        Some(&token(&a)),
    )
    .await;
    let first = next_json(&mut socket, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        first["type"], "snapshot",
        "the old version is unknown to the new process"
    );
    assert_eq!(widget_value(&first, "total_revenue"), Some(current));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_without_sending_state_twice() {
    let server = serve(
        "fanout-test-live-resume",
        Options {
            schema: Some("fanout_live_resume"),
            ..Options::default()
        },
    )
    .await;
    let a = tenant(1);
    // A WebSocket keeps the tenant's state (and so its versions) known.
    let mut keeper = ws_connect(
        server.address,
        &format!("/tenants/{a}/live"),
        Some(&token(&a)),
    )
    .await;
    next_json(&mut keeper, Duration::from_secs(10))
        .await
        .unwrap();
    let client = server.client(&a);
    let path = format!("/tenants/{a}/live/events");
    let first = client
        .get_for(&path, &[], Duration::from_millis(1500))
        .await;
    let events = crate::parse_events(&first.chunks);
    assert_eq!(events.len(), 1, "{events:?}");
    let (_, kind, id, _) = &events[0];
    assert_eq!(kind, "snapshot");

    let resumed = client
        .get_for(&path, &[("last-event-id", id)], Duration::from_millis(1500))
        .await;
    assert_eq!(resumed.status, StatusCode::OK);
    assert!(
        crate::parse_events(&resumed.chunks).is_empty(),
        "nothing changed, nothing sent: {:?}",
        resumed.text()
    );

    let later = {
        let client = client.clone();
        let (path, id) = (path.clone(), id.clone());
        tokio::spawn(async move {
            client
                .get_for(&path, &[("last-event-id", &id)], Duration::from_secs(4))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    pay(&server, &a, 999).await;
    let events = crate::parse_events(&later.await.unwrap().chunks);
    let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert!(!kinds.contains(&"snapshot"), "{kinds:?}");
    assert!(
        kinds.contains(&"widgets") && kinds.contains(&"payment_received"),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_clients_get_a_clean_503() {
    let server = serve(
        "fanout-test-live-limit",
        Options {
            max_connections: 2,
            ..Options::default()
        },
    )
    .await;
    let a = tenant(1);
    let path = format!("/tenants/{a}/live");
    let mut one = ws_connect(server.address, &path, Some(&token(&a))).await;
    let mut two = ws_connect(server.address, &path, Some(&token(&a))).await;
    next_json(&mut one, Duration::from_secs(10)).await.unwrap();
    next_json(&mut two, Duration::from_secs(10)).await.unwrap();
    assert_eq!(server.live_connections(), 2);
    let (status, body) = ws_rejected(server.address, &path, Some(token(&a))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("too many live connections"), "{body}");
    let sse = server
        .client(&a)
        .get_for(&format!("{path}/events"), &[], Duration::from_secs(2))
        .await;
    assert_eq!(
        sse.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        sse.text()
    );
    assert!(sse.headers.contains_key("retry-after"));

    one.close(None).await.unwrap();
    drop(one);
    let until = Instant::now() + Duration::from_secs(5);
    while server.live_connections() > 1 {
        assert!(
            Instant::now() < until,
            "the closed connection's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut three = ws_connect(server.address, &path, Some(&token(&a))).await;
    assert_eq!(
        next_json(&mut three, Duration::from_secs(10))
            .await
            .unwrap()["type"],
        "snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    let _alone = crate::TIMING.lock().await;
    let server = serve(
        "fanout-test-live-slow",
        Options {
            schema: Some("fanout_live_slow"),
            ..Options::default()
        },
    )
    .await;
    let a = tenant(1);
    let path = format!("/tenants/{a}/live");
    // Connected, never read again: its socket buffers fill, its task waits.
    let _stalled = ws_connect(server.address, &path, Some(&token(&a))).await;
    let mut reader = ws_connect(server.address, &path, Some(&token(&a))).await;
    let snapshot = next_json(&mut reader, Duration::from_secs(10))
        .await
        .unwrap();
    let mut expected = widget_value(&snapshot, "total_revenue")
        .unwrap()
        .as_i64()
        .unwrap();
    for n in 0..15 {
        expected += pay(&server, &a, 100 + n).await;
        let committed = Instant::now();
        until_widget(
            &mut reader,
            "total_revenue",
            &Value::from(expected),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            committed.elapsed() < Duration::from_secs(1),
            "update {n} took {:?}",
            committed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let _alone = crate::TIMING.lock().await;
    let server = serve_cycles().await;
    let a = tenant(1);
    // Each pooled database connection has a task driving it, and the pool
    // opens connections as the snapshots need them: those are counted
    // apart (they stay, pooled, as they should).
    let pooled = || server.state.pool().status().size;
    let tasks_before = server.runtime.metrics().num_alive_tasks() - pooled();
    for n in 0..1000 {
        if n % 2 == 0 {
            let mut socket = ws_connect(
                server.address,
                &format!("/tenants/{a}/live"),
                Some(&token(&a)),
            )
            .await;
            if n % 4 == 0 {
                next_json(&mut socket, Duration::from_secs(10))
                    .await
                    .unwrap();
            }
            if n % 8 == 0 {
                socket.close(None).await.unwrap();
            }
        } else {
            let limit = Duration::from_millis(if n % 4 == 1 { 0 } else { 20 });
            server
                .client(&a)
                .get_for(&format!("/tenants/{a}/live/events"), &[], limit)
                .await;
        }
    }
    // An SSE client that hung up is noticed at the server's next write,
    // at worst its 15 s keep-alive: wait that long, and a little more.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (connections, tenants) = (server.live_connections(), server.state.live().tenants());
        let tasks = server.runtime.metrics().num_alive_tasks() - pooled();
        if connections == 0 && tenants == 0 && tasks <= tasks_before {
            break;
        }
        assert!(
            Instant::now() < until,
            "left behind: {connections} connections, {tenants} tenants, {tasks} tasks besides the pool's (from {tasks_before})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_cycles() -> Server {
    serve("fanout-test-live-cycles", Options::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_of_many_tenants_under_random_payments_see_only_their_own() {
    let server = serve(
        "fanout-test-live-isolation",
        Options {
            schema: Some("fanout_live_isolation"),
            // It counts each tenant's events: the other tests' payments
            // (same tenant ids, same channel) must not reach it.
            database: Some("fanout_live_isolation"),
            ..Options::default()
        },
    )
    .await;
    let tenants: Vec<String> = (1..=3).map(tenant).collect();
    let mut clients = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for _ in 0..3 {
            let mut socket = ws_connect(
                server.address,
                &format!("/tenants/{t}/live"),
                Some(&token(t)),
            )
            .await;
            next_json(&mut socket, Duration::from_secs(10))
                .await
                .unwrap();
            clients.push((i, socket));
        }
    }
    let mut readers = Vec::new();
    for (i, mut socket) in clients {
        readers.push(tokio::spawn(async move {
            let mut messages = Vec::new();
            while let Some(message) = next_json(&mut socket, Duration::from_secs(3)).await {
                messages.push(message);
            }
            (i, messages)
        }));
    }
    // A fixed pseudo-random order of payments over the tenants.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut paid = [0usize; 3];
    for _ in 0..24 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let i = (state % 3) as usize;
        pay(&server, &tenants[i], 100 + (state % 900) as i64).await;
        paid[i] += 1;
        tokio::time::sleep(Duration::from_millis(state % 60)).await;
    }
    for reader in readers {
        let (i, messages) = reader.await.unwrap();
        let own = &tenants[i];
        let mut events = 0;
        let mut last_revenue = None;
        for message in &messages {
            if let Some(data) = message.get("data") {
                assert_eq!(data["tenant"], own.as_str(), "{own} got {message}");
                events += usize::from(message["type"] == "payment_received");
            }
            if let Some(value) = widget_value(message, "total_revenue") {
                last_revenue = Some(value);
            }
        }
        assert_eq!(events, paid[i], "{own}: one payment_received per payment");
        if paid[i] > 0 {
            assert_eq!(
                last_revenue,
                Some(revenue(&server, own).await),
                "{own} ends at its own revenue"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_both_deliver_a_payment() {
    let options = Options {
        schema: Some("fanout_live_instances"),
        ..Options::default()
    };
    let first = serve("fanout-test-live-instance-1", options.clone()).await;
    let second = serve("fanout-test-live-instance-2", options).await;
    let a = tenant(1);
    let mut sockets = Vec::new();
    for server in [&first, &second] {
        let mut socket = ws_connect(
            server.address,
            &format!("/tenants/{a}/live"),
            Some(&token(&a)),
        )
        .await;
        let snapshot = next_json(&mut socket, Duration::from_secs(10))
            .await
            .unwrap();
        sockets.push((
            socket,
            widget_value(&snapshot, "total_revenue")
                .unwrap()
                .as_i64()
                .unwrap(),
        ));
    }
    let before = sockets[0].1.max(sockets[1].1);
    let paid = pay(&first, &a, 3333).await;
    for (socket, _) in &mut sockets {
        let seen = until_widget(
            socket,
            "total_revenue",
            &Value::from(before + paid),
            Duration::from_secs(5),
        )
        .await;
        let more = next_json(socket, Duration::from_millis(500)).await;
        assert!(
            seen.iter()
                .chain(more.iter())
                .any(|m| m["type"] == "payment_received"),
            "{seen:?} {more:?}"
        );
    }
}
