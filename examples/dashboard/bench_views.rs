//! `--bench-views`: cold dashboards (no cache in front) with the hybrid
//! queries that read closed months from the materialized views, against
//! the live-only queries (`--no-views`), in one run. One client, one
//! dashboard at a time, the two kinds alternating (and which goes first
//! alternating too) over every tenant, so both see the same server, the
//! same buffer cache and the same noise; then the medians and their ratio.
//! Loaded concurrently (what a user waits for) and sequentially (the sum of
//! the queries: the database work a dashboard costs).

use std::time::{Duration, Instant};

use fanout::{FanOut, TenantId};

use crate::stats::{self, Samples};
use crate::widgets::{self, Dashboard};

/// One kind of dashboard's samples: the whole dashboard and each widget.
struct Kind {
    whole: Samples,
    per_query: Vec<Samples>,
    degraded: usize,
}

impl Kind {
    fn new() -> Self {
        Self {
            whole: Samples::default(),
            per_query: vec![Samples::default(); widgets::NAMES.len()],
            degraded: 0,
        }
    }

    async fn time(&mut self, fan_out: &FanOut, dashboard: &Dashboard, tenant: &TenantId) {
        let started = Instant::now();
        let (a, b, c, d, e, f) = fan_out.run(tenant, widgets::refs(dashboard)).await;
        self.whole.push(started.elapsed());
        let sources = [
            &a.source, &b.source, &c.source, &d.source, &e.source, &f.source,
        ];
        self.degraded += sources.iter().filter(|s| !s.is_fresh()).count();
        for (samples, elapsed) in self.per_query.iter_mut().zip([
            a.elapsed, b.elapsed, c.elapsed, d.elapsed, e.elapsed, f.elapsed,
        ]) {
            samples.push(elapsed);
        }
    }
}

pub async fn run(
    dashboards: usize,
    views: &Dashboard,
    live: &Dashboard,
    sequential: &FanOut,
    concurrent: &FanOut,
    tenants: &[TenantId],
    pool_size: usize,
) -> Result<(), String> {
    // Prepare every statement on every connection before anything is timed.
    for _ in 0..pool_size {
        concurrent.run(&tenants[0], widgets::refs(views)).await;
        concurrent.run(&tenants[0], widgets::refs(live)).await;
    }
    // The comparison means nothing unless both give the same values.
    for tenant in tenants {
        let (a, b, c, d, e, f) = concurrent.run(tenant, widgets::refs(views)).await;
        let (la, lb, lc, ld, le, lf) = concurrent.run(tenant, widgets::refs(live)).await;
        let fresh = [
            &a.source, &b.source, &c.source, &d.source, &e.source, &f.source,
        ]
        .iter()
        .chain(
            [
                &la.source, &lb.source, &lc.source, &ld.source, &le.source, &lf.source,
            ]
            .iter(),
        )
        .all(|s| s.is_fresh());
        let same = a.value == la.value
            && b.value == lb.value
            && c.value == lc.value
            && d.value == ld.value
            && e.value == le.value
            && f.value == lf.value;
        if !fresh || !same {
            return Err(format!(
                "{tenant}: the dashboard with views differs from the live one (fresh {fresh}, same values {same})"
            ));
        }
    }
    println!(
        "views vs live: the same values for all {} tenants; {dashboards} cold dashboards of each kind per loading, alternating, one at a time\n",
        tenants.len()
    );
    println!(
        "| loading    | queries      | dashboards |        p50 |        p95 |        p99 | degraded widgets |"
    );
    println!(
        "|------------|--------------|-----------:|-----------:|-----------:|-----------:|-----------------:|"
    );
    let mut ratios = Vec::new();
    let mut widget_lines = Vec::new();
    for (loading, fan_out) in [("concurrent", concurrent), ("sequential", sequential)] {
        let (mut with_views, mut live_only) = (Kind::new(), Kind::new());
        for i in 0..dashboards {
            let tenant = &tenants[i % tenants.len()];
            if i % 2 == 0 {
                with_views.time(fan_out, views, tenant).await;
                live_only.time(fan_out, live, tenant).await;
            } else {
                live_only.time(fan_out, live, tenant).await;
                with_views.time(fan_out, views, tenant).await;
            }
        }
        for (name, kind) in [("views", &with_views), ("live only", &live_only)] {
            println!(
                "| {loading:<10} | {name:<12} | {:>10} | {:>10} | {:>10} | {:>10} | {:>16} |",
                kind.whole.len(),
                stats::ms(kind.whole.p(50)),
                stats::ms(kind.whole.p(95)),
                stats::ms(kind.whole.p(99)),
                kind.degraded
            );
        }
        ratios.push((
            loading,
            stats::ratio(live_only.whole.p(50), with_views.whole.p(50)),
        ));
        if loading == "concurrent" {
            for (i, name) in widgets::NAMES.iter().enumerate() {
                widget_lines.push(format!(
                    "  {name:<16} {:>10} live only, {:>10} with views",
                    stats::ms(median(&live_only.per_query[i])),
                    stats::ms(median(&with_views.per_query[i]))
                ));
            }
        }
    }
    println!();
    for (loading, ratio) in ratios {
        println!(
            "{loading}: a cold dashboard with views is {ratio:.2}x faster (live-only p50 / views p50)"
        );
    }
    println!("\nper widget, p50 (concurrent):");
    for line in widget_lines {
        println!("{line}");
    }
    Ok(())
}

fn median(samples: &Samples) -> Duration {
    samples.p(50)
}
