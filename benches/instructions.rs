//! One fan-out variant, run a given number of times, for counting
//! instructions under callgrind: a figure that, unlike wall time, does not
//! move with the load of a shared machine. `scripts/bench-instructions`
//! runs every variant twice (N iterations and 0) and reports the
//! difference per input, with the ratio to the hand-written baseline.
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-* settle ready 100 200
//! ```
//!
//! `run6 prometheus` installs a Prometheus recorder first (for the
//! `metrics` feature's cost with a recorder); `run6 ready`, none.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use fanout::cache::{CachePolicy, Cached, QueryCache};
use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
use tokio::time::timeout;

mod common;
use common::cached::{HandWritten, NAMES};
use common::{TIMEOUT, futures_unordered_timeout, mixed, ready, yield_once};

/// A ready dashboard query.
struct Ready(&'static str, i64);

impl DashboardQuery for Ready {
    type Output = i64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        self.0
    }

    async fn run(&self, ctx: QueryContext) -> Result<i64, std::io::Error> {
        black_box(ctx.tenant());
        Ok(self.1)
    }

    fn fallback(&self) -> i64 {
        0
    }
}

type Six = (Ready, Ready, Ready, Ready, Ready, Ready);

/// The baseline for `run`: `tokio::join!` of six `timeout`-wrapped queries.
async fn join_six(queries: &Six, tenant: &TenantId) -> [i64; 6] {
    let limit = Duration::from_secs(2);
    let deadline = tokio::time::Instant::now().checked_add(limit);
    let ctx = || QueryContext::new(tenant.clone(), deadline);
    let (a, b, c, d, e, f) = tokio::join!(
        timeout(limit, queries.0.run(ctx())),
        timeout(limit, queries.1.run(ctx())),
        timeout(limit, queries.2.run(ctx())),
        timeout(limit, queries.3.run(ctx())),
        timeout(limit, queries.4.run(ctx())),
        timeout(limit, queries.5.run(ctx())),
    );
    let value =
        |r: Result<Result<i64, std::io::Error>, _>| r.ok().and_then(Result::ok).unwrap_or(0);
    [value(a), value(b), value(c), value(d), value(e), value(f)]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [variant, kind, n, iterations] = args.as_slice() else {
        eprintln!("usage: instructions VARIANT KIND N ITERATIONS");
        eprintln!(
            "  VARIANT: baseline | settle | settle_c64 | run6 | join6 | cached6 | lookups6;  KIND: ready | yield | mixed | prometheus"
        );
        return ExitCode::from(2);
    };
    let (Ok(n), Ok(iterations)) = (n.parse::<usize>(), iterations.parse::<usize>()) else {
        eprintln!("instructions: N and ITERATIONS are whole numbers");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let settle = FanOut::new().timeout(TIMEOUT);
    let settle_c64 = settle
        .clone()
        .concurrency(NonZeroUsize::new(64).expect("64 > 0"));
    let dashboard = FanOut::new().timeout(Duration::from_secs(2));
    let six: Six = (
        Ready("a", 1),
        Ready("b", 2),
        Ready("c", 3),
        Ready("d", 4),
        Ready("e", 5),
        Ready("f", 6),
    );
    let tenant = TenantId::new("creche-042").expect("a valid tenant id");
    let inputs = || 0..n as u64;
    // Six `Cached` widgets holding a value, and the same by hand.
    let cache = QueryCache::new(10_000);
    let policy = CachePolicy::ttl(Duration::from_secs(3600));
    let [n1, n2, n3, n4, n5, n6] = NAMES;
    let cached = (
        Cached::new(Ready(n1, 1), &cache, policy),
        Cached::new(Ready(n2, 2), &cache, policy),
        Cached::new(Ready(n3, 3), &cache, policy),
        Cached::new(Ready(n4, 4), &cache, policy),
        Cached::new(Ready(n5, 5), &cache, policy),
        Cached::new(Ready(n6, 6), &cache, policy),
    );
    let by_hand = runtime.block_on(async {
        let (a, b, c, d, e, f) = &cached;
        dashboard.run(&tenant, (a, b, c, d, e, f)).await;
        HandWritten::filled(&tenant, 1).await
    });
    let _recorder = (kind == "prometheus").then(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("no recorder installed before")
    });

    if std::env::var_os("SIZES").is_some() {
        let (a, b, c, d, e, f) = &cached;
        eprintln!(
            "run cached6 future: {}",
            std::mem::size_of_val(&dashboard.run(&tenant, (a, b, c, d, e, f)))
        );
        eprintln!(
            "one Cached load: {}",
            std::mem::size_of_val(&a.load(QueryContext::new(tenant.clone(), None)))
        );
        let (a, b, c, d, e, f) = &six;
        eprintln!(
            "run6 future: {}",
            std::mem::size_of_val(&dashboard.run(&tenant, (a, b, c, d, e, f)))
        );
        eprintln!(
            "lookups6 future: {}",
            std::mem::size_of_val(&by_hand.six(&tenant))
        );
        eprintln!(
            "join6 future: {}",
            std::mem::size_of_val(&join_six(&six, &tenant))
        );
    }
    let known = runtime.block_on(async {
        for _ in 0..iterations {
            match (variant.as_str(), kind.as_str()) {
                ("baseline", "ready") => drop(black_box(futures_unordered_timeout(n, ready).await)),
                ("baseline", "yield") => {
                    drop(black_box(futures_unordered_timeout(n, yield_once).await))
                }
                ("baseline", "mixed") => drop(black_box(futures_unordered_timeout(n, mixed).await)),
                ("settle", "ready") => drop(black_box(settle.settle(inputs().map(ready)).await)),
                ("settle", "yield") => {
                    drop(black_box(settle.settle(inputs().map(yield_once)).await))
                }
                ("settle", "mixed") => drop(black_box(settle.settle(inputs().map(mixed)).await)),
                ("settle_c64", "ready") => {
                    drop(black_box(settle_c64.settle(inputs().map(ready)).await))
                }
                ("settle_c64", "yield") => {
                    drop(black_box(settle_c64.settle(inputs().map(yield_once)).await))
                }
                ("settle_c64", "mixed") => {
                    drop(black_box(settle_c64.settle(inputs().map(mixed)).await))
                }
                ("run6", _) => {
                    let (a, b, c, d, e, f) = &six;
                    drop(black_box(dashboard.run(&tenant, (a, b, c, d, e, f)).await));
                }
                ("join6", _) => drop(black_box(join_six(&six, &tenant).await)),
                ("cached6", _) => {
                    let (a, b, c, d, e, f) = &cached;
                    drop(black_box(dashboard.run(&tenant, (a, b, c, d, e, f)).await));
                }
                ("lookups6", _) => drop(black_box(by_hand.six(&tenant).await)),
                _ => return false,
            }
        }
        true
    });
    if known {
        ExitCode::SUCCESS
    } else {
        eprintln!("instructions: unknown variant {variant} {kind}");
        ExitCode::from(2)
    }
}
