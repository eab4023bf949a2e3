//! A throw-away Postgres cluster for the dashboard example, `std` only.
//!
//! Does what `scripts/pg-env` does: finds the server binaries, `initdb`s a
//! cluster in a fresh temp dir, starts it on 127.0.0.1 on a free port with
//! settings for speed rather than durability (keep them in sync with
//! `scripts/pg-env`), and creates database `fanout`. Dropping the value stops
//! the server and deletes the directory.
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root, so when we are
//! root they run as the `postgres` user through `runuser`.

use std::ffi::OsStr;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// A running throw-away cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    url: String,
    /// Temp dir holding `data/` (the cluster), `sock/` and `server.log`.
    dir: PathBuf,
    /// Directory with `initdb`, `pg_ctl`, `postgres` and `createdb`.
    bin: PathBuf,
    /// Whether server-side commands go through `runuser -u postgres`.
    as_postgres: bool,
    /// Whether `pg_ctl start` succeeded, i.e. Drop has a server to stop.
    running: bool,
}

impl ThrowawayPostgres {
    /// Creates, starts and returns a fresh cluster with an empty database
    /// `fanout`. Errors are one line: the failing command and the last line
    /// of what it printed.
    pub fn start() -> Result<Self, String> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        let dir = make_temp_dir()?;
        // From here on, Drop cleans up whatever has been done so far.
        let mut pg = ThrowawayPostgres {
            url: String::new(),
            dir,
            bin,
            as_postgres,
            running: false,
        };
        let data = pg.dir.join("data");
        let sock = pg.dir.join("sock");
        fs::create_dir(&sock).map_err(|e| format!("mkdir {}: {e}", sock.display()))?;
        if pg.as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(&pg.dir))?;
        }

        // Trust auth: the server only listens on loopback and on a socket in a
        // private dir, and it lives only as long as this process.
        let mut initdb = pg.server_cmd("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(&mut initdb)?;

        // Another process may take the port between choosing and binding it,
        // so try a few.
        let log = pg.dir.join("server.log");
        let mut port = 0;
        for attempt in 1..=3 {
            port = free_port()?;
            // Durability off: a crash loses a cluster we would delete anyway.
            // The file exists (initdb wrote it) and keeps its owner.
            let conf = format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{}'\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n\
                 max_connections = 200\n\
                 shared_buffers = '256MB'\n",
                sock.display()
            );
            let auto_conf = data.join("postgresql.auto.conf");
            fs::write(&auto_conf, conf)
                .map_err(|e| format!("write {}: {e}", auto_conf.display()))?;

            let mut pg_ctl = pg.server_cmd("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
            match run(&mut pg_ctl) {
                Ok(()) => {
                    pg.running = true;
                    break;
                }
                Err(e) if attempt == 3 => {
                    // pg_ctl itself only says "could not start server"; the
                    // reason is in the server log.
                    let reason = fs::read_to_string(&log)
                        .ok()
                        .and_then(|s| {
                            s.lines()
                                .rev()
                                .find(|l| !l.trim().is_empty())
                                .map(str::to_owned)
                        })
                        .unwrap_or_default();
                    return Err(format!("{e}; server log: {reason}"));
                }
                Err(_) => {}
            }
        }

        let port_s = port.to_string();
        let mut createdb = Command::new(pg.bin.join("createdb"));
        createdb.args(["-h", "127.0.0.1", "-p", &port_s, "-U", "postgres", "fanout"]);
        run(&mut createdb)?;

        pg.url = format!("postgres://postgres@127.0.0.1:{port}/fanout");
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/fanout`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m
    /// immediate`): connections are cut, nothing is shut down cleanly. The
    /// cluster stays; [`start_again`](Self::start_again) restarts it.
    #[allow(dead_code)] // tests/postgres/restart.rs uses it; the example does not
    pub fn stop_immediately(&mut self) -> Result<(), String> {
        let mut stop = self.server_cmd("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(&mut stop)?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped cluster again on the same port, waiting until it
    /// accepts connections (after crash recovery, if it was stopped
    /// [immediately](Self::stop_immediately)).
    #[allow(dead_code)] // as above
    pub fn start_again(&mut self) -> Result<(), String> {
        let mut start = self.server_cmd("pg_ctl");
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(&mut start)?;
        self.running = true;
        Ok(())
    }

    /// A command for a server-side binary, run as `postgres` when we are root.
    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        // The postgres user may not be able to enter our working directory.
        cmd.current_dir(&self.dir);
        cmd
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = self.server_cmd("pg_ctl");
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"]);
            if let Err(e) = run(&mut stop) {
                eprintln!("throwaway_pg: {e}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("throwaway_pg: rm -rf {}: {e}", self.dir.display());
        }
    }
}

/// Runs a command to completion; on failure returns one line naming it and
/// quoting the last line it printed to stderr (or stdout).
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{shown}` could not be run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let last = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
    };
    let said = last(&out.stderr)
        .or_else(|| last(&out.stdout))
        .unwrap_or_default();
    Err(format!("`{shown}` failed ({}): {said}", out.status))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `PATH` first (following
/// symlinks, so `pg_ctl` finds `postgres` beside it), then the newest
/// `/usr/lib/postgresql/VERSION/bin`.
fn find_bin() -> Result<PathBuf, String> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "createdb"]
            .iter()
            .all(|p| is_executable(&dir.join(p)))
    };

    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|dir| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl")))
        .filter_map(|dir| {
            fs::canonicalize(dir.join("initdb"))
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .find(|real| complete(real));
    if let Some(real) = on_path {
        return Ok(real);
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: \
         apt-get install postgresql, or set DATABASE_URL to use an existing server"
            .to_owned()
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Root, by `id -u`; if `id` cannot be run, by $USER.
fn is_root() -> bool {
    match Command::new("id").arg("-u").stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim() == "0",
        _ => std::env::var("USER").is_ok_and(|u| u == "root"),
    }
}

/// A port nothing listens on right now: bind port 0 and let it go.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))
}

/// A new private (0700) directory under the system temp dir.
fn make_temp_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for i in 0..100u32 {
        let dir = base.join(format!("fanout-pg-{}-{nanos:09}-{i}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("chmod 700 {}: {e}", dir.display()))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "mkdir: no fresh directory name under {}",
        base.display()
    ))
}
