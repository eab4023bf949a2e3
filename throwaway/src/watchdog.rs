//! A script that starts a server, then watches its owner through a pipe.
//!
//! The script prints one line once the server is up, then serves commands
//! read from standard input, one a line, each answered `ok` or `error:
//! ...`. End of input means the owner is gone: the script stops the server
//! and deletes its files.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// What every watchdog script starts with. Ctrl-C reaches the whole
/// foreground process group; the watchdog has a group of its own, and
/// ignores SIGINT and SIGHUP besides, so it outlives its owner to clean up.
/// SIGPIPE is ignored so that an answer to an owner already gone cannot
/// kill it before the cleanup.
const PROLOGUE: &str = "set -uo pipefail\ntrap '' INT HUP PIPE\n";

#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    /// The owner's end of the pipe: closing it (drop, exit, kill) is what
    /// tells the watchdog to clean up.
    commands: Option<ChildStdin>,
    answers: BufReader<ChildStdout>,
}

impl Watchdog {
    /// Runs `script` (after [`PROLOGUE`]) under bash; returns the watchdog
    /// and the first line the script printed. If the script exits first,
    /// the error is the last line it wrote to stderr.
    pub(crate) fn start(
        name: &str,
        script: &str,
        env: &[(&str, String)],
    ) -> Result<(Self, String), String> {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("{PROLOGUE}{script}"))
            .arg(name)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{name}: cannot run bash: {e}"))?;
        let commands = child.stdin.take();
        let mut answers = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let mut line = String::new();
        let read = answers.read_line(&mut line);
        if read.is_err() || line.is_empty() {
            // Exited without starting: say why, in one line.
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            let status = child.wait().map_err(|e| format!("{name}: {e}"))?;
            let last = said
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(
                    || format!("{name} exited ({status})"),
                    |l| l.trim().to_owned(),
                );
            return Err(last);
        }
        // From here on the script sends its stderr to /dev/null.
        drop(stderr);
        let watchdog = Watchdog {
            child,
            commands,
            answers,
        };
        Ok((watchdog, line.trim_end().to_owned()))
    }

    /// Sends one command and waits for its answer.
    pub(crate) fn command(&mut self, command: &str) -> Result<(), String> {
        let commands = self.commands.as_mut().expect("open until drop");
        writeln!(commands, "{command}")
            .and_then(|()| commands.flush())
            .map_err(|e| format!("{command}: the watchdog is gone: {e}"))?;
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .map_err(|e| format!("{command}: {e}"))?;
        match line.trim_end() {
            "ok" => Ok(()),
            "" => Err(format!("{command}: the watchdog is gone")),
            other => Err(format!("{command}: {other}")),
        }
    }
}

impl Drop for Watchdog {
    /// Closes the pipe and waits while the watchdog stops the server and
    /// deletes its files.
    fn drop(&mut self) {
        drop(self.commands.take());
        let _ = self.child.wait();
    }
}
