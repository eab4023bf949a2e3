//! A throw-away Redis server: `scripts/redis-env` under a watchdog.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::watchdog::Watchdog;

/// Starts the server, prints `URL<TAB>DIR`, then serves `kill` (`SIGKILL`,
/// as a crash) until its input ends; then stops the server and deletes its
/// files.
const SCRIPT: &str = concat!(
    include_str!("../../scripts/redis-env"),
    r#"
redis_find_bin >/dev/null || exit 1
redis_start_throwaway </dev/null || exit 1
printf '%s\t%s\n' "$REDIS_URL" "$REDIS_THROWAWAY_DIR"
exec 2>/dev/null
while read -r command; do
    case $command in
    kill)
        pid=
        [[ ! -f $REDIS_THROWAWAY_DIR/redis.pid ]] || pid=$(<"$REDIS_THROWAWAY_DIR/redis.pid")
        _redis_kill "$REDIS_THROWAWAY_DIR" KILL
        if [[ -n $pid ]] && _redis_alive "$pid"; then
            echo "error: redis-server $pid survived SIGKILL"
        else
            echo ok
        fi
        ;;
    *) echo "error: unknown command" ;;
    esac
done
exec >/dev/null
redis_stop_throwaway
"#
);

/// A running throw-away Redis on 127.0.0.1, persistence off. Dropping it,
/// or the owning process ending in any way, stops the server and deletes
/// its files.
#[derive(Debug)]
pub struct Redis {
    url: String,
    port: u16,
    dir: PathBuf,
    watchdog: Watchdog,
}

impl Redis {
    /// Starts a server on a free port, returning once it answers `PING`.
    /// The error is one line; when `redis-server` is missing it says what
    /// to install.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// Starts a server on `port` (say, the port of one that was
    /// [killed](Self::kill)).
    pub fn start_on(port: u16) -> Result<Self, String> {
        Self::start_with(&[("REDIS_THROWAWAY_PORT", port.to_string())])
    }

    fn start_with(env: &[(&str, String)]) -> Result<Self, String> {
        let (watchdog, ready) = Watchdog::start("redis-env", SCRIPT, env)?;
        let parsed = ready.split_once('\t').and_then(|(url, dir)| {
            let port = url
                .strip_prefix("redis://127.0.0.1:")?
                .trim_end_matches('/')
                .parse()
                .ok()?;
            Some((url.to_owned(), port, PathBuf::from(dir)))
        });
        let (url, port, dir) =
            parsed.ok_or_else(|| format!("redis-env: unexpected answer {ready:?}"))?;
        Ok(Redis {
            url,
            port,
            dir,
            watchdog,
        })
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding its files, deleted with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with `SIGKILL`, as a crash would, and returns once
    /// it is gone. Dropping the value afterwards still deletes its files.
    pub fn kill(&mut self) -> Result<(), String> {
        self.watchdog.command("kill")
    }
}

/// `REDIS_URL` if set; otherwise the URL of a throw-away Redis started on
/// the first call and shared by every later one in this process, removed
/// when the process exits.
///
/// # Panics
///
/// If the server cannot be started (on every call, with the same one-line
/// reason: say, the command that installs `redis-server`).
pub fn redis_url() -> String {
    static SHARED: OnceLock<Result<Redis, String>> = OnceLock::new();
    if let Ok(url) = std::env::var("REDIS_URL") {
        return url;
    }
    match SHARED.get_or_init(Redis::start) {
        Ok(server) => server.url().to_owned(),
        Err(e) => panic!("REDIS_URL is not set and no throw-away Redis could be started: {e}"),
    }
}
