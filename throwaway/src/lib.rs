//! Throw-away PostgreSQL and Redis servers for tests, doc tests and
//! examples, started from the server binaries installed on this machine.
//!
//! [`database_url`] and [`redis_url`] return `DATABASE_URL` / `REDIS_URL`
//! when set (`scripts/test` sets them, for one server every test binary
//! shares); otherwise a server started once per process. [`Postgres`] and
//! [`Redis`] are servers of a caller's own, for a test that stops or kills
//! one, and for the examples.
//!
//! Each server is started by `scripts/pg-env` or `scripts/redis-env` (the
//! scripts `scripts/test` uses) inside a watchdog: a `bash` in a process
//! group of its own whose standard input is a pipe from its owner. When
//! the owner drops the value, or exits in any way (a failed test, a panic,
//! `SIGKILL`), the kernel closes the pipe, and the watchdog stops the
//! server and deletes its temp dir. A static's destructor never runs at
//! exit, and no destructor runs on `SIGKILL`; a closed pipe always comes.
//!
//! Nothing is installed here: when the server binaries are missing, the
//! error names the package to install (or `scripts/test`, which installs
//! them).

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod postgres;
mod redis;
mod watchdog;

pub use postgres::{Postgres, database_url};
pub use redis::{Redis, redis_url};
