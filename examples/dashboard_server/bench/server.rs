//! A server the bench starts: this binary again, as a child process with
//! server flags, so that its memory (`/proc/<pid>/status`) is the
//! server's alone and not the clients'.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use super::http::Connection;

/// The HS256 secret every bench server verifies and the bench signs with.
pub const SECRET: &str = "dashboard-server-bench-secret";
/// Where the servers' logs go (a `--no-cache` server under 400 clients
/// warns once per widget it sheds).
pub const LOG: &str = "target/dashboard_server-bench.log";

/// A running server; dropping it kills the process.
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts a server on `port` against the database at `url` with
    /// `flags` besides the port and secret, and waits until it answers.
    pub async fn start(url: &str, port: u16, flags: &[&str]) -> Result<Self, String> {
        let program =
            std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        std::fs::create_dir_all("target").map_err(|e| format!("cannot create target/: {e}"))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(LOG)
            .map_err(|e| format!("cannot open {LOG}: {e}"))?;
        let child = Command::new(program)
            .args(["--port", &port.to_string(), "--jwt-secret", SECRET])
            .args(flags)
            .env("DATABASE_URL", url)
            .env_remove("DASHBOARD_JWT_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start a server: {e}"))?;
        let mut server = Self { child, port };
        let started = Instant::now();
        loop {
            // It binds the port before seeding and serves after: a
            // connection alone does not mean it is ready.
            let answer = timeout(Duration::from_secs(2), async {
                Connection::open(port).await?.get("/metrics", None).await
            })
            .await;
            if let Ok(Ok((status, _))) = answer
                && status.is_success()
            {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server on port {port} exited ({status}); see {LOG}"
                ));
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "the server on port {port} did not answer within 120 s; see {LOG}"
                ));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's resident memory (`VmRSS`), in bytes.
    pub fn resident_bytes(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("no VmRSS in {path}"))
    }

    /// Widget queries the server has run against the database so far:
    /// the sum of its `fanout_query_outcomes_total{outcome="fresh"}`.
    pub async fn fresh_queries(&self) -> Result<f64, String> {
        let (status, body) = Connection::open(self.port)
            .await?
            .get("/metrics", None)
            .await?;
        if !status.is_success() {
            return Err(format!("GET /metrics answered {status}"));
        }
        let text = String::from_utf8_lossy(&body);
        Ok(text
            .lines()
            .filter(|line| {
                line.starts_with("fanout_query_outcomes_total{")
                    && line.contains("outcome=\"fresh\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
