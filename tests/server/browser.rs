//! The dashboard page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver) turns away a forged token, signs in with a good
//! one, shows the six widgets live and a committed payment without a
//! reload, and after a server restart reconnects by itself to the current
//! values. A screenshot is left in `target/browser-dashboard.png` for a
//! person to look at.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs
//! them); without them the test fails saying so, it never skips.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fanout::TenantId;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::{Options, Server, db, serve, tenant, token, widgets, writer};

const INSTALL: &str =
    "apt-get install chromium chromium-driver (scripts/test installs them when missing)";
const WIDGETS: [&str; 6] = widgets::NAMES;
const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/browser-dashboard.png");

/// `name` on PATH, or in /usr/bin.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver, in a process group of its own so that dropping this kills
/// the browsers it started too, also when the test panics.
struct Driver {
    child: Child,
    address: SocketAddr,
}

impl Driver {
    fn start(chromedriver: &Path) -> Self {
        use std::os::unix::process::CommandExt;

        // A free port: bound, read and released; chromedriver takes it a
        // moment later (a race only with another process binding port 0
        // in between, which would show as a failed start below).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let mut driver = Self {
            child,
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(driver.address).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start-up ({status})");
            }
            assert!(
                Instant::now() < until,
                "chromedriver did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it runs.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows, read in one round trip: the state, each widget's
/// value, source and latency, the events, the token it remembers, and
/// whether `window.browserTestMarker` (gone after a reload) is still set.
async fn page(client: &Client) -> Value {
    let script = r##"
        const text = (root, selector) => {
            const element = root.querySelector(selector);
            return element ? element.textContent.trim() : null;
        };
        const widgets = {};
        for (const card of document.querySelectorAll('[id^="widget-"]')) {
            widgets[card.id.slice("widget-".length)] = {
                value: text(card, ".value"),
                source: text(card, ".source"),
                latency: text(card, ".latency"),
            };
        }
        return {
            state: text(document, "#state"),
            widgets,
            events: Array.from(document.querySelectorAll("#events li"), (li) => li.textContent),
            remembered: sessionStorage.getItem("fanout-dashboard-token"),
            marker: window.browserTestMarker === true,
        };
    "##;
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("reading the page: {e}"))
}

/// Polls the page until `done` holds, for at most `limit`; panics with the
/// last reading, naming `what`.
async fn until(
    client: &Client,
    what: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let shown = page(client).await;
        if done(&shown) {
            return shown;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}; the page shows {shown:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_widgets_shown(shown: &Value) -> bool {
    WIDGETS.iter().all(|name| {
        let widget = &shown["widgets"][*name];
        ["value", "source", "latency"]
            .iter()
            .all(|field| widget[*field].as_str().is_some_and(|text| !text.is_empty()))
    })
}

/// The tenant's total revenue in cents, from the JSON route.
async fn revenue(server: &Server, tenant: &str) -> i64 {
    let response = server
        .client(tenant)
        .get(&format!(
            "/tenants/{tenant}/dashboard?widgets=total_revenue"
        ))
        .await;
    let json = response.json();
    json["widgets"][0]["value"]
        .as_i64()
        .unwrap_or_else(|| panic!("no total_revenue in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_six_live_widgets_a_payment_without_reload_and_reconnects_after_a_restart() {
    let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        panic!("the browser test needs chromium and chromedriver: {INSTALL}");
    };
    // Chromium keeps the cores busy for seconds: not beside the tests
    // that time things.
    let _alone = crate::TIMING.lock().await;
    let server = serve(
        "fanout-test-browser",
        Options {
            schema: Some("fanout_browser"),
            // Its payments for tenant-0001 must not reach the other tests'
            // servers, which count their tenant's events.
            database: Some("fanout_browser"),
            ..Options::default()
        },
    )
    .await;
    let tenant = tenant(1);
    let driver = Driver::start(&chromedriver);

    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            // --no-sandbox: the tests run as root, where Chromium's
            // sandbox refuses to start; --disable-dev-shm-usage: containers'
            // /dev/shm is often too small for it.
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{}", driver.address))
        .await
        .unwrap_or_else(|e| panic!("a WebDriver session on chromedriver: {e}"));

    client
        .goto(&format!("http://{}/", server.address))
        .await
        .unwrap();
    let signed_out = page(&client).await;
    assert_eq!(signed_out["state"], "signed out", "{signed_out:#}");

    // A token signed with another secret: the page shows the server's 401
    // error and stays there.
    let forged = crate::auth::Auth::new(b"not-the-servers-secret-0123456789").token(
        "test-user",
        &tenant,
        Duration::from_secs(3600),
    );
    sign_in(&client, &forged).await;
    until(
        &client,
        "a forged token rejected",
        Duration::from_secs(10),
        |shown| {
            shown["state"]
                .as_str()
                .is_some_and(|state| state.starts_with("rejected: "))
        },
    )
    .await;

    let jwt = token(&tenant);
    sign_in(&client, &jwt).await;
    let shown = until(
        &client,
        "six widgets and a live connection",
        Duration::from_secs(20),
        |shown| shown["state"] == "live" && all_widgets_shown(shown),
    )
    .await;
    assert_eq!(shown["remembered"], jwt.as_str());
    let before = revenue(&server, &tenant).await;
    assert_eq!(
        shown["widgets"]["total_revenue"]["value"],
        widgets::Cents(before).to_string(),
        "{shown:#}"
    );

    // Set on this document only: a reload would lose it.
    client
        .execute("window.browserTestMarker = true;", Vec::new())
        .await
        .unwrap();
    let paid = pay(&server.config, &tenant, 4321).await;
    let expected = widgets::Cents(before + paid).to_string();
    let shown = until(
        &client,
        "the payment on the page",
        Duration::from_secs(10),
        |shown| {
            shown["widgets"]["total_revenue"]["value"] == expected.as_str()
                && shown["events"].as_array().is_some_and(|events| {
                    events
                        .iter()
                        .any(|e| e.as_str().is_some_and(|e| e.contains("payment_received")))
                })
        },
    )
    .await;
    assert_eq!(shown["marker"], true, "the page reloaded: {shown:#}");
    assert_eq!(shown["state"], "live", "{shown:#}");

    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(Path::new(SCREENSHOT).parent().unwrap()).unwrap();
    std::fs::write(SCREENSHOT, png).unwrap_or_else(|e| panic!("writing {SCREENSHOT}: {e}"));

    // The server restarts: the page says it is reconnecting, then is live
    // again with what was committed while no server ran, still without a
    // reload (it resumes with its last version, unknown to the new
    // process, so it gets a snapshot).
    let (config, port) = (server.config.clone(), server.address.port());
    server.stop().await;
    until(
        &client,
        "reconnecting after the server stopped",
        Duration::from_secs(10),
        |shown| {
            shown["state"]
                .as_str()
                .is_some_and(|state| state.starts_with("reconnecting in "))
        },
    )
    .await;
    let paid_offline = pay(&config, &tenant, 1111).await;
    let server = serve(
        "fanout-test-browser",
        Options {
            schema: Some("fanout_browser"),
            // Its payments for tenant-0001 must not reach the other tests'
            // servers, which count their tenant's events.
            database: Some("fanout_browser"),
            port: Some(port),
            ..Options::default()
        },
    )
    .await;
    let expected = widgets::Cents(before + paid + paid_offline).to_string();
    // The backoff's ceilings while the server was down add up to a few
    // seconds; one more full-jitter wait is 8 s at most at this point.
    let shown = until(
        &client,
        "live again after the restart",
        Duration::from_secs(40),
        |shown| {
            shown["state"] == "live"
                && shown["widgets"]["total_revenue"]["value"] == expected.as_str()
        },
    )
    .await;
    assert_eq!(shown["marker"], true, "the page reloaded: {shown:#}");

    client.close().await.unwrap();
    drop(driver);
    server.stop().await;
}

/// Types `jwt` into the page's token field (replacing what is there) and
/// clicks "Sign in".
async fn sign_in(client: &Client, jwt: &str) {
    let field = client.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(jwt).await.unwrap();
    client
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Commits a payment of up to `cents` for `tenant` (see `writer::pay`):
/// the amount paid.
async fn pay(config: &tokio_postgres::Config, tenant: &str, cents: i64) -> i64 {
    let mut client = db::connect(config).await.unwrap();
    match writer::pay(&mut client, &TenantId::new(tenant).unwrap(), cents)
        .await
        .unwrap()
    {
        writer::Wrote::Payment { amount_cents } => amount_cents,
        other => panic!("{tenant}: {other:?}"),
    }
}
