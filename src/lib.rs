//! Run a tenant's dashboard queries together: each value comes back with
//! where it came from, no query can hang or break the page, and the
//! connection pool stays protected.
//!
//! A dashboard that runs six independent queries one after another costs
//! the sum of their latencies; run together, it costs the slowest one.
//! `fanout` is the glue every service writes around `join_all` to do that
//! safely, written once: per-query timeouts and fallbacks, an overall
//! deadline, bounded concurrency, panic isolation and `tracing` logs.
//!
//! # The dashboard
//!
//! The reference dashboard: six queries of 150 to 350 ms, 2 s for each, 3 s
//! for the whole. Sequentially it takes 1.5 s; with `fanout` it takes the
//! slowest query, 350 ms, and a failing query shows its fallback.
//!
//! ```
//! use std::time::Duration;
//! use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
//! use tokio::time::{Instant, sleep};
//!
//! /// A stand-in for a database query: answers after `latency`.
//! struct Widget {
//!     name: &'static str,
//!     latency: Duration,
//!     fails: bool,
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("connection reset")]
//! struct QueryError;
//!
//! impl DashboardQuery for Widget {
//!     type Output = i64;
//!     type Error = QueryError;
//!
//!     fn name(&self) -> &'static str {
//!         self.name
//!     }
//!
//!     async fn run(&self, ctx: QueryContext) -> Result<i64, QueryError> {
//!         // A real query filters by `ctx.tenant()` and passes
//!         // `ctx.deadline()` on to the database.
//!         let _tenant = ctx.tenant();
//!         sleep(self.latency).await;
//!         if self.fails { Err(QueryError) } else { Ok(self.latency.as_millis() as i64) }
//!     }
//!
//!     fn fallback(&self) -> i64 {
//!         0
//!     }
//! }
//!
//! fn widget(name: &'static str, ms: u64) -> Widget {
//!     Widget { name, latency: Duration::from_millis(ms), fails: false }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), fanout::InvalidTenantId> {
//! let fan_out = FanOut::new()
//!     .timeout(Duration::from_secs(2))
//!     .deadline(Duration::from_secs(3));
//! let tenant = TenantId::new("creche-042")?;
//!
//! let started = Instant::now();
//! let (revenue, outstanding, children, invoices, payments, arrears) = fan_out
//!     .run(
//!         &tenant,
//!         (
//!             widget("total_revenue", 250),
//!             widget("outstanding", 200),
//!             widget("child_count", 150),
//!             widget("invoice_stats", 300),
//!             widget("recent_payments", 350),
//!             Widget { fails: true, ..widget("arrears", 250) },
//!         ),
//!     )
//!     .await;
//!
//! assert_eq!(started.elapsed(), Duration::from_millis(350)); // not 1500
//! assert!(revenue.is_fresh() && payments.is_fresh());
//! assert_eq!(revenue.value + outstanding.value + children.value + invoices.value, 900);
//! assert!(arrears.is_degraded());
//! assert_eq!(arrears.source.to_string(), "fallback (error: connection reset)");
//! # Ok(()) }
//! ```
//!
//! # What each failure becomes
//!
//! | the query…                                   | [`Settled`] (free functions, [`FanOut::settle`]) | [`Source`] ([`FanOut::run`]) | logged at |
//! |----------------------------------------------|----------------------------|---------------------------------------------|-------|
//! | returns `Ok`                                 | `Ok(value)`                | `Fresh`                                     | DEBUG |
//! | returns `Err`                                | `Err(error)`               | `Fallback(Failure::Error(error))`           | WARN  |
//! | runs past its timeout                        | `TimedOut`                 | `Fallback(Failure::TimedOut)`               | WARN  |
//! | is running or waiting when the deadline passes | `DeadlineExceeded`       | `Fallback(Failure::DeadlineExceeded)`       | WARN  |
//! | panics                                       | `Panicked(message)`        | `Fallback(Failure::Panicked(message))`      | ERROR |
//! | waits on a [closed limiter](FanOut::limiter) | `LimiterClosed`            | `Fallback(Failure::LimiterClosed)`          | WARN  |
//! | is shed by a [`FairLimiter`] under load      | `Shed`                     | `Fallback(Failure::Shed)`                   | DEBUG |
//!
//! With a cache (feature `cache`), a value served from it is
//! `Source::Cached { age }` (DEBUG), and a failed query with a last good
//! value younger than its stale-if-error window shows that value as
//! `Source::Stale { age, cause }` (WARN) instead of its fallback.
//!
//! # Under failure
//!
//! - Nothing a fan-out awaits outlives its deadline, stale lookups
//!   ([`DashboardQuery::stale`]) included: they run inside the fan-out,
//!   beside the queries still in flight, and a query's own timeout bounds
//!   its lookup too. A lookup ready when asked is used even at the
//!   deadline; one that is not counts as "no stale value".
//! - Nothing starts at or after the deadline.
//! - A panic in any hook (`run`, `load`, `name`, `timeout`, `stale`, or the
//!   `Drop` of a query's future or of its lookup, started or not) becomes
//!   that query's `Panicked`, or "no stale value"; the siblings are
//!   untouched. (The query values you pass are yours: they are dropped
//!   when the call returns.) Only a failed query whose `fallback()` panics
//!   has no value at all: see `# Panics` on [`FanOut::run`].
//!
//! # Under load
//!
//! [`FanOut::limiter`] bounds every request of a service together with one
//! FIFO semaphore sized to the connection pool. In a multi-tenant service,
//! [`FanOut::fair_limiter`] with a [`FairLimiter`] shares those permits
//! fairly between tenants (one tenant's hundred dashboards wait behind each
//! other, not in front of everyone else's) and sheds what cannot finish in
//! time: a widget that could no longer get a permit before its deadline
//! degrades at once (`Stale` or `Fallback(Failure::Shed)`) instead of
//! starting a query the deadline would cut off. [`Outcome::waited`] and
//! [`Report::queue_length`] show the wait.
//!
//! # Features
//!
//! | feature    | adds |
//! |------------|------|
//! | `cache`    | [`cache`]: per-query TTL, one execution per (tenant, query) for concurrent callers, stale-if-error, `warm` (moka) |
//! | `postgres` | [`postgres`]: run a tokio-postgres statement under the query's deadline, enforced by the server, and cancelled on the server when the query is dropped |
//! | `sqlx`     | [`sqlx`](mod@sqlx): run a sqlx query under the query's deadline, enforced by the server, from a task that owns the pooled connection until it is clean, cancelling the statement on the server when the query is dropped |
//! | `serde`    | [`dynamic`]: widget sets chosen at run time, values as `serde_json::Value` |
//! | `live`     | [`live`]: live dashboards, one refresh per tenant per change pushed to every open dashboard, with a PostgreSQL `NOTIFY` change feed (with `postgres`) |
//! | `metrics`  | [`metrics`]: query outcome counters and latency histograms through the `metrics` facade |
//!
//! # Logging
//!
//! Through [`tracing`]: a span per fan-out (`fan_out`) and per query
//! (`query`), and one event per input when it settles, with the fields
//! `tenant`, `query`, `outcome` (the [`Source::label`] word: `fresh`,
//! `error`, `timed_out`, ...), `elapsed_ms` and, for errors and panics,
//! `error`. The free functions and [`FanOut::settle`] log `index` in place
//! of `tenant` and `query`, and [`Settled::label`] (`ok`, `error`, ...) as
//! `outcome`.
//!
//! # Limits
//!
//! [`FanOut::new`] sets no timeout and no deadline. Everything runs inside
//! the calling task (no `tokio::spawn`), so inputs may borrow and dropping
//! the fan-out cancels them; timers need a tokio runtime with its time
//! driver.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
mod drive;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod dynamic;
mod fair;
mod fan_out;
mod hooks;
mod in_order;
mod limiter;
#[cfg(feature = "live")]
#[cfg_attr(docsrs, doc(cfg(feature = "live")))]
pub mod live;
mod log;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod outcome;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod query;
mod query_set;
mod query_stream;
mod query_tuple;
mod queue;
mod report;
mod resolve;
mod running;
mod settled;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;
#[cfg(any(feature = "postgres", feature = "sqlx"))]
mod statement_timeout;
mod tenant;

pub use fair::FairLimiter;
pub use fan_out::FanOut;
pub use outcome::{BoxError, Failure, Outcome, Source};
pub use query::{DashboardQuery, Loaded, QueryContext};
pub use query_set::QuerySet;
pub use report::{QueryReport, Report};
pub use settled::{Settled, join_all_settled_with_timeout, join_all_with_defaults};
pub use tenant::{InvalidTenantId, TenantId};

// Compiles and runs the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
