//! Per-input overhead of `fanout` against hand-written baselines.
//!
//! One criterion group per (input kind, n), so that every figure in a group
//! comes from the same run and can be read as a ratio to the hand-written
//! `FuturesUnordered` + `tokio::time::timeout` baseline
//! (`futures_unordered_timeout`). `Throughput::Elements(n)` makes criterion
//! report the per-input cost.
//!
//! Input kinds:
//! - `ready`: `async { Ok(i) }`, ready on the first poll;
//! - `yield_once`: `yield_now().await`, then `Ok(i)`;
//! - `mixed_10pct_err`: ready, every 10th input returns `Err(i)`.
//!
//! Plus `run_6_queries`: `FanOut::run` over a tuple of six ready
//! `DashboardQuery` impls, against `tokio::join!` of six
//! `tokio::time::timeout`-wrapped calls of the same queries.
//!
//! Everything runs on a current-thread tokio runtime. Filter with e.g.
//! `cargo bench --bench overhead -- 'yield_once/'`.

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use fanout::{
    DashboardQuery, FanOut, Outcome, QueryContext, TenantId, join_all_settled_with_timeout,
};
use futures_util::future::join_all;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

mod common;
use common::{TIMEOUT, futures_unordered_timeout, mixed, ready, yield_once};

const SIZES: [usize; 4] = [6, 100, 10_000, 100_000];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// --- inputs -----------------------------------------------------------------

// --- hand-written baselines -------------------------------------------------

/// `futures::future::join_all` over `timeout`-wrapped inputs.
async fn baseline_join_all<F, Fut>(
    n: usize,
    make: F,
) -> Vec<Result<Fut::Output, tokio::time::error::Elapsed>>
where
    F: Fn(u64) -> Fut,
    Fut: Future,
{
    join_all((0..n as u64).map(|i| timeout(TIMEOUT, make(i)))).await
}

/// `JoinSet`: every input spawned as its own task, `(index, result)`
/// collected and put back in input order.
async fn baseline_join_set<F, Fut>(
    n: usize,
    make: F,
) -> Vec<Result<Fut::Output, tokio::time::error::Elapsed>>
where
    F: Fn(u64) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut set = JoinSet::new();
    for (index, input) in (0..n as u64).map(&make).enumerate() {
        set.spawn(async move { (index, timeout(TIMEOUT, input).await) });
    }
    let mut slots: Vec<Option<_>> = Vec::with_capacity(n);
    slots.resize_with(n, || None);
    while let Some(joined) = set.join_next().await {
        let (index, result) = joined.expect("inputs do not panic");
        slots[index] = Some(result);
    }
    slots
        .into_iter()
        .map(|slot| slot.expect("every input settles"))
        .collect()
}

// --- groups -----------------------------------------------------------------

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.throughput(Throughput::Elements(n as u64));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    match n {
        0..=1_000 => {}
        1_001..=10_000 => {
            group.sample_size(30).sampling_mode(SamplingMode::Flat);
        }
        _ => {
            group.sample_size(10).sampling_mode(SamplingMode::Flat);
        }
    }
}

fn bench_kind<F, Fut>(c: &mut Criterion, rt: &Runtime, kind: &str, make: F)
where
    F: Fn(u64) -> Fut + Copy,
    Fut: Future<Output = Result<u64, u64>> + Send + 'static,
{
    let settle = FanOut::new().timeout(TIMEOUT);
    let settle_c64 = FanOut::new()
        .timeout(TIMEOUT)
        .concurrency(NonZeroUsize::new(64).expect("non-zero"));

    for n in SIZES {
        let mut group = c.benchmark_group(format!("{kind}/{n}"));
        configure(&mut group, n);

        group.bench_function("join_all_settled_with_timeout", |b| {
            b.to_async(rt)
                .iter(|| join_all_settled_with_timeout((0..n as u64).map(make), TIMEOUT));
        });
        group.bench_function("settle_timeout", |b| {
            b.to_async(rt)
                .iter(|| settle.settle((0..n as u64).map(make)));
        });
        group.bench_function("settle_timeout_c64", |b| {
            b.to_async(rt)
                .iter(|| settle_c64.settle((0..n as u64).map(make)));
        });
        group.bench_function("futures_unordered_timeout", |b| {
            b.to_async(rt).iter(|| futures_unordered_timeout(n, make));
        });
        group.bench_function("join_all_timeout", |b| {
            b.to_async(rt).iter(|| baseline_join_all(n, make));
        });
        group.bench_function("join_set_timeout", |b| {
            b.to_async(rt).iter(|| baseline_join_set(n, make));
        });
        group.finish();
    }
}

// --- run_6_queries ----------------------------------------------------------

#[derive(Debug)]
struct QueryError;

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("query failed")
    }
}

impl std::error::Error for QueryError {}

/// A query that answers at once.
struct Constant {
    name: &'static str,
    value: i64,
}

impl DashboardQuery for Constant {
    type Output = i64;
    type Error = QueryError;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<i64, QueryError> {
        black_box(ctx.tenant());
        Ok(self.value)
    }

    fn fallback(&self) -> i64 {
        0
    }
}

type Six = (Constant, Constant, Constant, Constant, Constant, Constant);

fn six_queries() -> Six {
    let q = |name, value| Constant { name, value };
    (
        q("total_revenue", 1),
        q("outstanding", 2),
        q("child_count", 3),
        q("invoice_stats", 4),
        q("recent_payments", 5),
        q("arrears", 6),
    )
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a service writes by hand: each query under `timeout`, all six under
/// `tokio::join!`, the fallback for anything that did not return `Ok`.
async fn hand_written_join(queries: &Six, tenant: &TenantId) -> [i64; 6] {
    let (q1, q2, q3, q4, q5, q6) = queries;
    let deadline = Instant::now().checked_add(QUERY_TIMEOUT);
    let ctx = || QueryContext::new(tenant.clone(), deadline);
    let (r1, r2, r3, r4, r5, r6) = tokio::join!(
        timeout(QUERY_TIMEOUT, q1.run(ctx())),
        timeout(QUERY_TIMEOUT, q2.run(ctx())),
        timeout(QUERY_TIMEOUT, q3.run(ctx())),
        timeout(QUERY_TIMEOUT, q4.run(ctx())),
        timeout(QUERY_TIMEOUT, q5.run(ctx())),
        timeout(QUERY_TIMEOUT, q6.run(ctx())),
    );
    let value = |r: Result<Result<i64, QueryError>, _>, q: &Constant| match r {
        Ok(Ok(v)) => v,
        _ => q.fallback(),
    };
    [
        value(r1, q1),
        value(r2, q2),
        value(r3, q3),
        value(r4, q4),
        value(r5, q5),
        value(r6, q6),
    ]
}

async fn fan_out_run(fan_out: &FanOut, queries: &Six, tenant: &TenantId) -> [Outcome<i64>; 6] {
    let (q1, q2, q3, q4, q5, q6) = queries;
    let (o1, o2, o3, o4, o5, o6) = fan_out.run(tenant, (q1, q2, q3, q4, q5, q6)).await;
    [o1, o2, o3, o4, o5, o6]
}

fn bench_run_6(c: &mut Criterion, rt: &Runtime) {
    let queries = six_queries();
    let tenant = TenantId::new("creche-042").expect("valid tenant id");
    let fan_out = FanOut::new().timeout(QUERY_TIMEOUT);

    let mut group = c.benchmark_group("run_6_queries");
    group.throughput(Throughput::Elements(6));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("fan_out_run", |b| {
        b.to_async(rt)
            .iter(|| fan_out_run(&fan_out, &queries, &tenant));
    });
    group.bench_function("tokio_join_timeout", |b| {
        b.to_async(rt).iter(|| hand_written_join(&queries, &tenant));
    });
    group.finish();
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default().configure_from_args();
    bench_kind(&mut c, &rt, "ready", ready);
    bench_kind(&mut c, &rt, "yield_once", yield_once);
    bench_kind(&mut c, &rt, "mixed_10pct_err", mixed);
    bench_run_6(&mut c, &rt);
    c.final_summary();
}
