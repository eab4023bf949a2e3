//! The cached path: what a dashboard of six `Cached` widgets costs when every
//! widget is a hit, and when every widget loads (the shared in-flight load,
//! stored in moka), each against a hand-written baseline in the same group.
//!
//! - `cached_6_hits`: `FanOut::run` over six `Cached` queries holding a
//!   value, against `tokio::join!` of six moka lookups keyed by tenant,
//!   generation and query name, as a service would write by hand
//!   (`common::cached`, also counted by `benches/instructions.rs`).
//! - `cached_6_loads`: the same six with a zero TTL, so every call runs a
//!   load (joined or started, the query, the store), against `FanOut::run`
//!   over the six queries uncached.
//! - `stampede_100`: 100 concurrent callers of one zero-TTL key whose query
//!   yields once (so the callers overlap), against 100 concurrent uncached
//!   calls: what sharing one load costs, or saves.
//!
//! `cargo bench --bench cache -- --noplot`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use fanout::cache::{CachePolicy, Cached, QueryCache};
use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
use futures_util::future::join_all;
use tokio::runtime::Runtime;

mod common;
use common::cached::{HandWritten, NAMES};

/// A query that answers at once, or after yielding to the scheduler once
/// (so that concurrent callers really overlap).
struct Widget {
    name: &'static str,
    runs: Arc<AtomicUsize>,
    yields: bool,
}

impl DashboardQuery for Widget {
    type Output = i64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<i64, std::io::Error> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if self.yields {
            tokio::task::yield_now().await;
        }
        Ok(ctx.tenant().as_str().len() as i64)
    }

    fn fallback(&self) -> i64 {
        0
    }
}

fn widget(name: &'static str, runs: &Arc<AtomicUsize>) -> Widget {
    Widget {
        name,
        runs: Arc::clone(runs),
        yields: false,
    }
}

type Six<Q> = (Q, Q, Q, Q, Q, Q);

fn six<Q>(make: impl Fn(&'static str) -> Q) -> Six<Q> {
    (
        make(NAMES[0]),
        make(NAMES[1]),
        make(NAMES[2]),
        make(NAMES[3]),
        make(NAMES[4]),
        make(NAMES[5]),
    )
}

async fn run_six<Q: DashboardQuery<Output = i64>>(
    fan_out: &FanOut,
    tenant: &TenantId,
    q: &Six<Q>,
) -> i64 {
    let (a, b, c, d, e, f) = fan_out
        .run(tenant, (&q.0, &q.1, &q.2, &q.3, &q.4, &q.5))
        .await;
    a.value + b.value + c.value + d.value + e.value + f.value
}

fn bench_hits(c: &mut Criterion, rt: &Runtime) {
    let runs = Arc::new(AtomicUsize::new(0));
    let cache = QueryCache::new(10_000);
    let policy = CachePolicy::ttl(Duration::from_secs(3600));
    let cached = six(|name| Cached::new(widget(name, &runs), &cache, policy));
    let tenant = TenantId::new("creche-042").expect("valid tenant id");
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));
    rt.block_on(run_six(&fan_out, &tenant, &cached));

    let by_hand = rt.block_on(HandWritten::filled(&tenant, 10));

    let mut group = c.benchmark_group("cached_6_hits");
    group.throughput(Throughput::Elements(6));
    group.bench_function("fan_out_run", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(run_six(&fan_out, &tenant, &cached).await) });
    });
    group.bench_function("hand_written_moka_lookups", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(by_hand.six(&tenant).await) });
    });
    group.finish();
}

fn bench_loads(c: &mut Criterion, rt: &Runtime) {
    let runs = Arc::new(AtomicUsize::new(0));
    let cache = QueryCache::new(10_000);
    let every_call_loads = CachePolicy::ttl(Duration::ZERO);
    let cached = six(|name| Cached::new(widget(name, &runs), &cache, every_call_loads));
    let uncached = six(|name| widget(name, &runs));
    let tenant = TenantId::new("creche-042").expect("valid tenant id");
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));

    let mut group = c.benchmark_group("cached_6_loads");
    group.throughput(Throughput::Elements(6));
    group.bench_function("fan_out_run_cached_ttl_0", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(run_six(&fan_out, &tenant, &cached).await) });
    });
    group.bench_function("fan_out_run_uncached", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(run_six(&fan_out, &tenant, &uncached).await) });
    });
    group.finish();
}

fn bench_stampede(c: &mut Criterion, rt: &Runtime) {
    let runs = Arc::new(AtomicUsize::new(0));
    let cache = QueryCache::new(10_000);
    let yielding = || Widget {
        yields: true,
        ..widget("total_revenue", &runs)
    };
    let cached = Cached::new(yielding(), &cache, CachePolicy::ttl(Duration::ZERO));
    let uncached = yielding();
    let tenant = TenantId::new("creche-042").expect("valid tenant id");
    let fan_out = FanOut::new().timeout(Duration::from_secs(2));

    let mut group = c.benchmark_group("stampede_100");
    group.throughput(Throughput::Elements(100));
    group.bench_function("cached_ttl_0", |b| {
        b.to_async(rt).iter(|| async {
            let calls = (0..100).map(|_| fan_out.run(&tenant, (&cached,)));
            black_box(join_all(calls).await.len())
        });
    });
    group.bench_function("uncached", |b| {
        b.to_async(rt).iter(|| async {
            let calls = (0..100).map(|_| fan_out.run(&tenant, (&uncached,)));
            black_box(join_all(calls).await.len())
        });
    });
    group.finish();

    // How many times the query ran for one stampede: the number BENCHMARKS.md
    // quotes beside the times.
    let before = runs.load(Ordering::Relaxed);
    rt.block_on(join_all((0..100).map(|_| fan_out.run(&tenant, (&cached,)))));
    println!(
        "stampede_100/cached_ttl_0: {} executions for 100 concurrent callers",
        runs.load(Ordering::Relaxed) - before
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_hits(&mut c, &rt);
    bench_loads(&mut c, &rt);
    bench_stampede(&mut c, &rt);
    c.final_summary();
}
