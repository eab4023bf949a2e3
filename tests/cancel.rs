//! Cancellation: dropping the fan-out drops every input; an input that times
//! out is dropped at its timeout, not when the fan-out ends; permits come
//! back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout::{DashboardQuery, FanOut, QueryContext, Settled, TenantId};
use support::{DropCounter, Ending, Scripted};
use tokio::sync::Semaphore;
use tokio::time::sleep;

fn hanging(drops: &DropCounter) -> impl Future<Output = Result<usize, ()>> + use<> {
    let guard = drops.guard();
    async move {
        let _guard = guard;
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_fan_out_drops_every_input_in_flight_and_never_started() {
    let drops = DropCounter::default();
    let limiter = Arc::new(Semaphore::new(3));
    let fan_out = FanOut::new().limiter(Arc::clone(&limiter));
    let inputs: Vec<_> = (0..5).map(|_| hanging(&drops)).collect();
    let settle = fan_out.settle(inputs);
    let outcome = tokio::time::timeout(Duration::from_secs(1), settle).await;
    assert!(outcome.is_err(), "the inputs never finish");
    assert_eq!(drops.dropped(), 5); // three running, two waiting for a permit
    assert_eq!(limiter.available_permits(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_input_is_dropped_at_its_timeout() {
    let drops = DropCounter::default();
    let observer = {
        let drops = drops.clone();
        async move {
            sleep(Duration::from_millis(10)).await;
            Ok(drops.dropped())
        }
    };
    // One at a time: the hanging input times out at 50 ms, then the
    // observer runs and sees it already dropped.
    let settled = FanOut::new()
        .timeout(Duration::from_millis(50))
        .sequential()
        .settle([
            Box::pin(hanging(&drops)) as futures_util::future::BoxFuture<'_, _>,
            Box::pin(observer),
        ])
        .await;
    assert_eq!(settled, [Settled::TimedOut, Settled::Ok(1)]);
}

/// Reports how many guards were dropped when it finishes.
struct Observer(DropCounter, Duration);

impl DashboardQuery for Observer {
    type Output = usize;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "observer"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<usize, Self::Error> {
        sleep(self.1).await;
        Ok(self.0.dropped())
    }

    fn fallback(&self) -> usize {
        usize::MAX
    }
}

/// Hangs holding a guard.
struct Hangs(DropCounter);

impl DashboardQuery for Hangs {
    type Output = usize;
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "hangs"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<usize, Self::Error> {
        let _guard = self.0.guard();
        std::future::pending().await
    }

    fn fallback(&self) -> usize {
        0
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_query_is_dropped_while_the_others_still_run() {
    let drops = DropCounter::default();
    let tenant = TenantId::new("t1").unwrap();
    let (hangs, observer) = FanOut::new()
        .run(
            &tenant,
            (
                Hangs(drops.clone()),
                Observer(drops.clone(), Duration::from_millis(100)),
            ),
        )
        .await;
    assert!(hangs.is_degraded());
    assert_eq!(observer.value, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_dashboard_drops_its_queries() {
    let drops = DropCounter::default();
    let tenant = TenantId::new("t1").unwrap();
    let fan_out = FanOut::new();
    let dashboard = fan_out.run(
        &tenant,
        (
            Hangs(drops.clone()),
            Scripted::new("hang", 1).ending(Ending::Hang),
        ),
    );
    // Hangs' own 50 ms timeout is longer than we wait.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), dashboard)
            .await
            .is_err()
    );
    assert_eq!(drops.dropped(), 1);
}
