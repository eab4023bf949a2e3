//! A throw-away PostgreSQL cluster: `scripts/pg-env` under a watchdog.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::watchdog::Watchdog;

/// Starts the cluster, prints `URL<TAB>DIR`, then serves `stop` (`pg_ctl
/// stop -m immediate`, as a crash) and `start` until its input ends; then
/// stops the cluster and deletes it.
const SCRIPT: &str = concat!(
    include_str!("../../scripts/pg-env"),
    r#"
pg_find_bin >/dev/null || exit 1
pg_start_throwaway </dev/null || exit 1
printf '%s\t%s\n' "$DATABASE_URL" "$PG_THROWAWAY_DIR"
exec 2>/dev/null
data=$PG_THROWAWAY_DIR/data
while read -r command; do
    case $command in
    stop)
        if _pg_as_owner "$PG_BIN/pg_ctl" -D "$data" -m immediate -w stop </dev/null >/dev/null 2>&1; then
            echo ok
        else
            echo "error: pg_ctl stop failed"
        fi
        ;;
    start)
        if _pg_as_owner "$PG_BIN/pg_ctl" -D "$data" -l "$PG_THROWAWAY_DIR/server.log" -w -t 60 start </dev/null >/dev/null 2>&1; then
            echo ok
        else
            echo "error: pg_ctl start failed: $(tail -n 1 "$PG_THROWAWAY_DIR/server.log")"
        fi
        ;;
    *) echo "error: unknown command" ;;
    esac
done
exec >/dev/null
pg_stop_throwaway
"#
);

/// A running throw-away PostgreSQL on 127.0.0.1 (trust auth, durability
/// off) with an empty database `fanout`. Dropping it, or the owning process
/// ending in any way, stops the server and deletes its files.
#[derive(Debug)]
pub struct Postgres {
    url: String,
    dir: PathBuf,
    watchdog: Watchdog,
}

impl Postgres {
    /// Creates and starts a fresh cluster (a second or two). The error is
    /// one line; when the server binaries are missing it says what to
    /// install.
    pub fn start() -> Result<Self, String> {
        let (watchdog, ready) = Watchdog::start("pg-env", SCRIPT, &[])?;
        let (url, dir) = ready
            .split_once('\t')
            .ok_or_else(|| format!("pg-env: unexpected answer {ready:?}"))?;
        Ok(Postgres {
            url: url.to_owned(),
            dir: dir.into(),
            watchdog,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/fanout`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The temp dir holding the cluster, deleted with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m
    /// immediate`). The cluster stays; [`start_again`](Self::start_again)
    /// restarts it.
    pub fn stop_immediately(&mut self) -> Result<(), String> {
        self.watchdog.command("stop")
    }

    /// Starts a stopped cluster again on the same port, returning once it
    /// accepts connections (after crash recovery).
    pub fn start_again(&mut self) -> Result<(), String> {
        self.watchdog.command("start")
    }
}

/// `DATABASE_URL` if set; otherwise the URL of a throw-away PostgreSQL
/// started on the first call and shared by every later one in this
/// process, removed when the process exits.
///
/// # Panics
///
/// If the server cannot be started (on every call, with the same one-line
/// reason: say, the command that installs the missing binaries).
pub fn database_url() -> String {
    static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    match SHARED.get_or_init(Postgres::start) {
        Ok(server) => server.url().to_owned(),
        Err(e) => {
            panic!("DATABASE_URL is not set and no throw-away PostgreSQL could be started: {e}")
        }
    }
}
