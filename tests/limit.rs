//! Bounded concurrency: the local limit, the shared limiter, and per-item
//! timeouts counted from each item's start.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout::{FanOut, Settled};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

/// Tracks how many inputs run at once and the most that ever did.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    async fn run(&self, ms: u64) -> Result<u64, ()> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        sleep(Duration::from_millis(ms)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(ms)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_limit_inputs_run_at_once() {
    let in_flight = InFlight::default();
    let fan_out = FanOut::new().concurrency(NonZeroUsize::new(3).unwrap());
    let started = Instant::now();
    let settled = fan_out.settle((0..10).map(|_| in_flight.run(100))).await;
    assert!(settled.iter().all(Settled::is_ok));
    assert_eq!(in_flight.peak(), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(400)); // ceil(10 / 3) rounds
}

#[tokio::test(start_paused = true)]
async fn a_timeout_starts_when_its_input_starts() {
    // Each input takes 300 ms against a 500 ms timeout; run one at a time,
    // the last starts at 900 ms and still succeeds.
    let in_flight = InFlight::default();
    let fan_out = FanOut::new()
        .timeout(Duration::from_millis(500))
        .sequential();
    let settled = fan_out.settle((0..4).map(|_| in_flight.run(300))).await;
    assert_eq!(settled, vec![Settled::Ok(300); 4]);
    assert_eq!(in_flight.peak(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_limiter_bounds_all_fan_outs_together() {
    let limiter = Arc::new(Semaphore::new(4));
    let fan_out = FanOut::new().limiter(Arc::clone(&limiter));
    let in_flight = InFlight::default();
    let dashboards = (0..5).map(|_| fan_out.settle((0..6).map(|_| in_flight.run(100))));
    let started = Instant::now();
    let all = futures_util::future::join_all(dashboards).await;
    assert!(all.iter().flatten().all(Settled::is_ok));
    assert_eq!(in_flight.peak(), 4);
    assert_eq!(started.elapsed(), Duration::from_millis(800)); // 30 inputs, 4 at a time
    assert_eq!(limiter.available_permits(), 4);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_permit_does_not_count_against_the_timeout() {
    let limiter = Arc::new(Semaphore::new(1));
    let fan_out = FanOut::new()
        .limiter(Arc::clone(&limiter))
        .timeout(Duration::from_millis(150));
    let in_flight = InFlight::default();
    let settled = fan_out.settle((0..3).map(|_| in_flight.run(100))).await;
    assert_eq!(
        settled,
        [Settled::Ok(100), Settled::Ok(100), Settled::Ok(100)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_inputs_still_waiting_for_a_permit() {
    let limiter = Arc::new(Semaphore::new(1));
    let held = Arc::clone(&limiter).acquire_owned().await.unwrap();
    let fan_out = FanOut::new()
        .limiter(Arc::clone(&limiter))
        .deadline(Duration::from_secs(1));
    let started = Instant::now();
    let settled = fan_out
        .settle([1, 2].map(|i| async move { Ok::<_, ()>(i) }))
        .await;
    assert_eq!(
        settled,
        [Settled::DeadlineExceeded, Settled::DeadlineExceeded]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    drop(held);
    assert_eq!(limiter.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_closed_limiter_settles_waiting_inputs_without_running_them() {
    let limiter = Arc::new(Semaphore::new(1));
    let fan_out = FanOut::new().limiter(Arc::clone(&limiter));
    let ran = AtomicUsize::new(0);
    let ran = &ran;
    let input = |ms: u64| async move {
        ran.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_millis(ms)).await;
        Ok::<_, ()>(ms)
    };
    let closer = async {
        sleep(Duration::from_millis(50)).await;
        limiter.close();
    };
    let (settled, ()) = tokio::join!(fan_out.settle([input(100), input(100), input(100)]), closer);
    assert_eq!(
        settled,
        [
            Settled::Ok(100),
            Settled::LimiterClosed,
            Settled::LimiterClosed
        ]
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_limit_and_a_limiter_together_obey_the_smaller() {
    let fan_out = FanOut::new()
        .limiter(Arc::new(Semaphore::new(5)))
        .concurrency(NonZeroUsize::new(2).unwrap());
    let in_flight = InFlight::default();
    fan_out.settle((0..6).map(|_| in_flight.run(10))).await;
    assert_eq!(in_flight.peak(), 2);
}
