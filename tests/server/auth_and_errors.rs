//! Authentication on every route, and an answer for every bad input: JSON
//! errors with the right status, no database text, a per-request deadline,
//! and the cache invalidated by the change feed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::auth::Claims;
use crate::live::{ws_connect, ws_rejected};
use crate::{Client, Options, SECRET, db, serve, serve_default, tenant, widgets_of, writer};

fn signed(claims: &Claims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn claims(tenant: &str, exp_from_now: i64) -> Claims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Claims {
        sub: "someone".into(),
        tenant: tenant.into(),
        exp: (now + exp_from_now) as u64,
    }
}

/// The body is `{"error": ...}` and nothing else: not a byte of data.
fn only_an_error(body: &Value) -> &str {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(object.len(), 1, "{body}");
    let error = object["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(!error.contains('\n'), "{error:?}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_rejects_missing_expired_forged_and_other_tenants_tokens() {
    let server = serve_default("fanout-test-server-auth").await;
    let own = tenant(1);
    let cases: [(&str, Option<String>, StatusCode, &str); 5] = [
        (
            "none",
            None,
            StatusCode::UNAUTHORIZED,
            "a bearer token is required",
        ),
        (
            "expired",
            Some(signed(&claims(&own, -5), SECRET)),
            StatusCode::UNAUTHORIZED,
            "the token has expired",
        ),
        (
            "forged",
            Some(signed(
                &claims(&own, 3600),
                b"someone-elses-secret-0123456789",
            )),
            StatusCode::UNAUTHORIZED,
            "the token's signature is not valid",
        ),
        (
            "garbage",
            Some("not.a.jwt".into()),
            StatusCode::UNAUTHORIZED,
            "the token is not valid",
        ),
        (
            "other tenant",
            Some(signed(&claims(&tenant(2), 3600), SECRET)),
            StatusCode::FORBIDDEN,
            "another tenant",
        ),
    ];
    let routes = ["dashboard", "dashboard/stream", "live/events"];
    for (what, token, status, message) in &cases {
        let client = Client {
            address: server.address,
            token: token.clone(),
        };
        for route in routes {
            let path = format!("/tenants/{own}/{route}");
            let response = client.get(&path).await;
            assert_eq!(
                response.status,
                *status,
                "{what} on {path}: {}",
                response.text()
            );
            assert!(
                response.content_type.starts_with("application/json"),
                "{what} on {path}"
            );
            assert!(
                only_an_error(&response.json()).contains(message),
                "{what} on {path}: {}",
                response.text()
            );
            if *status == StatusCode::UNAUTHORIZED {
                assert!(
                    response.headers.contains_key("www-authenticate"),
                    "{what} on {path}"
                );
            }
        }
        // The browser routes take the token as ?access_token= too.
        let query = token
            .as_ref()
            .map(|t| format!("?access_token={t}"))
            .unwrap_or_default();
        let anonymous = server.anonymous();
        let response = anonymous
            .get(&format!("/tenants/{own}/live/events{query}"))
            .await;
        assert_eq!(
            response.status,
            *status,
            "{what} as access_token: {}",
            response.text()
        );
        let (ws_status, body) =
            ws_rejected(server.address, &format!("/tenants/{own}/live{query}"), None).await;
        assert_eq!(ws_status, *status, "{what} on the WebSocket: {body}");
        assert!(body.contains(message), "{what} on the WebSocket: {body}");
        if let Some(token) = token {
            let (ws_status, _) = ws_rejected(
                server.address,
                &format!("/tenants/{own}/live"),
                Some(token.clone()),
            )
            .await;
            assert_eq!(ws_status, *status, "{what} on the WebSocket, as a header");
        }
    }
    // The right token opens all of them.
    let client = server.client(&own);
    assert_eq!(
        client
            .get(&format!("/tenants/{own}/dashboard"))
            .await
            .status,
        StatusCode::OK
    );
    let mut socket = ws_connect(
        server.address,
        &format!("/tenants/{own}/live"),
        Some(&token_for(&own)),
    )
    .await;
    assert_eq!(
        crate::live::next_json(&mut socket, Duration::from_secs(10))
            .await
            .unwrap()["type"],
        "snapshot"
    );
}

fn token_for(tenant: &str) -> String {
    crate::token(tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_its_status() {
    let server = serve_default("fanout-test-server-errors").await;
    let own = tenant(1);
    let client = server.client(&own);
    let cases = [
        (
            Method::GET,
            "/no/such/route".to_owned(),
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            Method::POST,
            format!("/tenants/{own}/dashboard"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
        (
            Method::DELETE,
            format!("/tenants/{own}/live"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?widgets=arrears&widgets=child_count"),
            StatusCode::BAD_REQUEST,
            "`widgets` is given twice",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?widgets=arrears,,child_count"),
            StatusCode::BAD_REQUEST,
            "`widgets` has an empty entry",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?widgets=arrears,"),
            StatusCode::BAD_REQUEST,
            "`widgets` has an empty entry",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?deadline_ms=0"),
            StatusCode::BAD_REQUEST,
            "`deadline_ms` must be",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?deadline_ms=soon"),
            StatusCode::BAD_REQUEST,
            "`deadline_ms` must be",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/dashboard?colour=blue"),
            StatusCode::BAD_REQUEST,
            "unknown parameter `colour`",
        ),
        (
            Method::GET,
            format!("/tenants/{own}/live/events?version=1"),
            StatusCode::BAD_REQUEST,
            "unknown parameter `version`",
        ),
    ];
    for (method, path, status, message) in cases {
        let response = client.request(method.clone(), &path, &[]).await;
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        assert!(
            response.content_type.starts_with("application/json"),
            "{method} {path}"
        );
        assert!(
            only_an_error(&response.json()).contains(message),
            "{method} {path}: {}",
            response.text()
        );
    }
    // A tenant that does not exist is a 404, not six zeros.
    let unknown = server
        .client("tenant-9999")
        .get("/tenants/tenant-9999/dashboard")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    assert_eq!(only_an_error(&unknown.json()), "no tenant tenant-9999");
    // Ids that are only dots are not ids.
    for id in [".", ".."] {
        let response = server
            .client(id)
            .get(&format!("/tenants/{id}/dashboard"))
            .await;
        assert_eq!(
            response.status,
            StatusCode::BAD_REQUEST,
            "{id}: {}",
            response.text()
        );
        assert_eq!(only_an_error(&response.json()), "tenant id is only dots");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_reach_the_logs_not_the_client() {
    let server = serve(
        "fanout-test-server-broken",
        Options {
            broken: vec!["outstanding"],
            ..Options::default()
        },
    )
    .await;
    let own = tenant(1);
    for path in [
        format!("/tenants/{own}/dashboard"),
        format!("/tenants/{own}/dashboard/stream"),
    ] {
        let response = server.client(&own).get(&path).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let text = response.text();
        assert!(
            !text.contains("no_such_table") && !text.contains("relation"),
            "{path}: {text}"
        );
        assert!(text.contains("fallback (query failed)"), "{path}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ms_is_honoured_up_to_the_servers_maximum() {
    let _alone = crate::TIMING.lock().await;
    let server = serve(
        "fanout-test-server-deadline",
        Options {
            slow: vec!["arrears"],
            ..Options::default()
        },
    )
    .await;
    let own = tenant(1);
    let client = server.client(&own);
    client
        .get(&format!("/tenants/{own}/dashboard?widgets=child_count"))
        .await; // a warm pool
    let started = std::time::Instant::now();
    let response = client
        .get(&format!("/tenants/{own}/dashboard?deadline_ms=400"))
        .await;
    let took = started.elapsed();
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let dashboard = response.json();
    assert_eq!(dashboard["deadline_ms"], 400);
    let arrears = widgets_of(&dashboard)
        .into_iter()
        .find(|(name, _, _)| name == "arrears")
        .unwrap();
    assert_eq!(arrears.1, "deadline_exceeded");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1900),
        "{took:?}"
    );

    let capped = client
        .get(&format!(
            "/tenants/{own}/dashboard?widgets=child_count&deadline_ms=999999"
        ))
        .await;
    assert_eq!(
        capped.json()["deadline_ms"],
        3000,
        "capped at the server's deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_repeats_and_a_committed_payment_invalidates_it() {
    let server = serve(
        "fanout-test-server-cache",
        Options {
            cache: true,
            schema: Some("fanout_server_cache"),
            ..Options::default()
        },
    )
    .await;
    let own = tenant(1);
    let client = server.client(&own);
    let path = format!("/tenants/{own}/dashboard");
    let first = widgets_of(&client.get(&path).await.json());
    assert!(
        first.iter().all(|(_, source, _)| source == "fresh"),
        "{first:?}"
    );
    let second = widgets_of(&client.get(&path).await.json());
    assert!(
        second.iter().all(|(_, source, _)| source == "cached"),
        "{second:?}"
    );
    assert_eq!(
        first.iter().map(|w| &w.2).collect::<Vec<_>>(),
        second.iter().map(|w| &w.2).collect::<Vec<_>>()
    );

    let mut db = db::connect(&server.config).await.unwrap();
    let fanout_tenant = fanout::TenantId::new(&own).unwrap();
    let writer::Wrote::Payment { amount_cents } =
        writer::pay(&mut db, &fanout_tenant, 4321).await.unwrap()
    else {
        panic!("the seed has an open invoice");
    };
    let before = first[0].2.as_i64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = widgets_of(&client.get(&path).await.json());
        if now[0].1 == "fresh" && now[0].2.as_i64() == Some(before + amount_cents) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the payment never showed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
