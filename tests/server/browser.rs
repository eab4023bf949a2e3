//! The dashboard page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver) signs in with a token, shows the six widgets
//! live, and shows a committed payment without a reload. A screenshot is
//! left in `target/browser-dashboard.png` for a person to look at.
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

const INSTALL: &str = "apt-get install chromium chromium-driver (scripts/test installs them when missing)";
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
            assert!(Instant::now() < until, "chromedriver did not listen on {port} within 20 s");
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
    let script = r#"
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
    "#;
    client
        .execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("reading the page: {e}"))
}

/// Polls the page until `done` holds, for at most `limit`; panics with the
/// last reading, naming `what`.
async fn until(client: &Client, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
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
        .get(&format!("/tenants/{tenant}/dashboard?widgets=total_revenue"))
        .await;
    let json = response.json();
    json["widgets"][0]["value"]
        .as_i64()
        .unwrap_or_else(|| panic!("no total_revenue in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_shows_six_live_widgets_and_a_payment_without_reload() {
    let (Some(chromium), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        panic!("the browser test needs chromium and chromedriver: {INSTALL}");
    };
    let server = serve(
        "fanout-test-browser",
        Options {
            schema: Some("fanout_browser"),
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

    let jwt = token(&tenant);
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(&jwt)
        .await
        .unwrap();
    client
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = until(&client, "six widgets and a live connection", Duration::from_secs(20), |shown| {
        shown["state"] == "live" && all_widgets_shown(shown)
    })
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
    let mut db = db::connect(&server.config).await.unwrap();
    let paid = match writer::pay(&mut db, &TenantId::new(&tenant).unwrap(), 4321)
        .await
        .unwrap()
    {
        writer::Wrote::Payment { amount_cents } => amount_cents,
        other => panic!("{tenant}: {other:?}"),
    };
    let expected = widgets::Cents(before + paid).to_string();
    let shown = until(&client, "the payment on the page", Duration::from_secs(10), |shown| {
        shown["widgets"]["total_revenue"]["value"] == expected.as_str()
            && shown["events"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e.as_str().is_some_and(|e| e.contains("payment_received"))))
    })
    .await;
    assert_eq!(shown["marker"], true, "the page reloaded: {shown:#}");
    assert_eq!(shown["state"], "live", "{shown:#}");

    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(Path::new(SCREENSHOT).parent().unwrap()).unwrap();
    std::fs::write(SCREENSHOT, png).unwrap_or_else(|e| panic!("writing {SCREENSHOT}: {e}"));
    client.close().await.unwrap();
    drop(driver);
    server.stop().await;
}
