//! What is left when the owner of throw-away servers dies: nothing. The
//! owner (src/bin/hold.rs) is killed with SIGKILL, so no destructor runs;
//! the watchdogs see their pipes close and remove the servers.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOLD: &str = env!("CARGO_BIN_EXE_throwaway-hold");

/// `host:port` of a `postgres://user@host:port/db` or `redis://host:port/`
/// URL.
fn address(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

fn answers(address: &str) -> bool {
    TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(1)).is_ok()
}

#[test]
fn servers_of_an_owner_killed_with_sigkill_are_stopped_and_their_files_deleted() {
    let mut owner = Command::new(HOLD)
        .args(["postgres", "redis"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(owner.stdout.take().unwrap()).lines();
    let mut servers: Vec<(String, PathBuf)> = Vec::new();
    for _ in 0..2 {
        let line = lines
            .next()
            .expect("throwaway-hold printed its servers")
            .unwrap();
        let (url, dir) = line.split_once('\t').unwrap();
        servers.push((address(url), dir.into()));
    }
    for (address, dir) in &servers {
        assert!(answers(address), "{address} does not answer");
        assert!(dir.is_dir(), "{} is missing", dir.display());
    }

    owner.kill().unwrap(); // SIGKILL
    owner.wait().unwrap();

    let started = Instant::now();
    for (address, dir) in &servers {
        while answers(address) || dir.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{address} still answers or {} still exists",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_missing_server_binary_fails_in_one_line_naming_the_package() {
    // A PATH with bash and nothing else: redis-server is not on it.
    let bin = std::env::temp_dir().join(format!("throwaway-path-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    let bash = Command::new("bash")
        .args(["-c", "command -v bash"])
        .output()
        .unwrap();
    let bash = String::from_utf8(bash.stdout).unwrap();
    let _ = std::fs::remove_file(bin.join("bash"));
    std::os::unix::fs::symlink(bash.trim(), bin.join("bash")).unwrap();

    let out = Command::new(HOLD)
        .arg("redis")
        .env("PATH", &bin)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&bin).unwrap();

    assert!(!out.status.success());
    let said = String::from_utf8(out.stderr).unwrap();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("apt-get install redis-server"), "{said}");
}
