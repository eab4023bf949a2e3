//! What both example binaries do around their work: a tokio runtime, WARN
//! logs, Ctrl-C, one-line errors with an exit code, and a seeded database.

use std::collections::BTreeSet;
use std::process::ExitCode;

use throwaway::Postgres;
use tokio_postgres::Config;

use crate::widgets::Mode;
use crate::{db, seed};

/// Runs `work` on a tokio runtime with logs at `level` on stderr. Ctrl-C
/// ends it with what `interrupted` returns; an error is printed as one line
/// after `program:`.
pub fn run_main(
    program: &str,
    level: tracing::Level,
    work: impl Future<Output = Result<(), String>>,
    interrupted: impl FnOnce() -> Result<(), String>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping `work` on Ctrl-C also stops and deletes a throw-away
    // PostgreSQL, even one still starting or seeding.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = work => outcome,
            _ = tokio::signal::ctrl_c() => interrupted(),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{program}: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A seeded database: `DATABASE_URL`'s, or a throw-away one that lives as
/// long as this value.
pub struct Database {
    pub config: Config,
    /// The server's URL, for a child process to connect to.
    #[allow(dead_code)] // only dashboard_server --bench hands it on
    pub url: String,
    _server: Option<Postgres>,
}

/// Connects to `DATABASE_URL` (or starts a throw-away PostgreSQL) and seeds
/// `schema` with `tenants` tenants unless it already holds that seed.
pub async fn database(schema: &str, tenants: u32) -> Result<Database, String> {
    let (server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            eprintln!("DATABASE_URL is not set: starting a throw-away PostgreSQL");
            let server = tokio::task::spawn_blocking(Postgres::start)
                .await
                .map_err(|e| e.to_string())??;
            let url = server.url().to_owned();
            (Some(server), url)
        }
    };
    let config = db::config(&url, schema)?;
    let client = db::connect(&config).await?;
    seed::ensure_seeded(&client, schema, tenants, true).await?;
    Ok(Database {
        config,
        url,
        _server: server,
    })
}

/// How each widget behaves, from the `--slow-query` and `--break-query`
/// flags.
pub fn modes<'a>(
    slow: &'a BTreeSet<&'static str>,
    broken: &'a BTreeSet<&'static str>,
) -> impl Fn(&str) -> Mode + Copy + 'a {
    move |name| {
        if slow.contains(name) {
            Mode::Slow
        } else if broken.contains(name) {
            Mode::Broken
        } else {
            Mode::Normal
        }
    }
}
