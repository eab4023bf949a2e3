//! Starts the servers named on the command line (`postgres`, `redis`),
//! prints `URL<TAB>DIR` for each, and holds them until killed: the owner
//! that tests/cleanup.rs kills.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut postgres = Vec::new();
    let mut redis = Vec::new();
    for kind in std::env::args().skip(1) {
        let started = match kind.as_str() {
            "postgres" => throwaway::Postgres::start().map(|server| {
                let line = format!("{}\t{}", server.url(), server.dir().display());
                postgres.push(server);
                line
            }),
            "redis" => throwaway::Redis::start().map(|server| {
                let line = format!("{}\t{}", server.url(), server.dir().display());
                redis.push(server);
                line
            }),
            other => Err(format!("unknown server {other:?}: postgres or redis")),
        };
        match started {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("throwaway-hold: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}
