//! The overall deadline: counted from the fan-out's start; running inputs are
//! dropped, inputs not yet started are never polled.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout::{FanOut, Settled};
use tokio::time::{Instant, sleep};

#[tokio::test(start_paused = true)]
async fn inputs_not_started_by_the_deadline_are_never_polled() {
    let polled = Arc::new(AtomicUsize::new(0));
    let inputs = (0..5).map(|i| {
        let polled = Arc::clone(&polled);
        async move {
            polled.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(400)).await;
            Ok::<_, ()>(i)
        }
    });
    let fan_out = FanOut::new()
        .deadline(Duration::from_secs(1))
        .concurrency(NonZeroUsize::new(2).unwrap());
    let started = Instant::now();
    let settled = fan_out.settle(inputs).await;
    // 0 and 1 run 0-400 ms, 2 and 3 run 400-800 ms, 4 starts at 800 ms and
    // is cut at 1000 ms.
    assert_eq!(
        settled,
        [
            Settled::Ok(0),
            Settled::Ok(1),
            Settled::Ok(2),
            Settled::Ok(3),
            Settled::DeadlineExceeded
        ]
    );
    assert_eq!(polled.load(Ordering::SeqCst), 5);
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    let polled_before = polled.load(Ordering::SeqCst);
    let inputs = (0..5).map(|i| {
        let polled = Arc::clone(&polled);
        async move {
            polled.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(600)).await;
            Ok::<_, ()>(i)
        }
    });
    let settled = fan_out.settle(inputs).await;
    // 0 and 1 finish at 600 ms; 2 and 3 are cut at 1000 ms; 4 never starts.
    assert_eq!(
        settled,
        [
            Settled::Ok(0),
            Settled::Ok(1),
            Settled::DeadlineExceeded,
            Settled::DeadlineExceeded,
            Settled::DeadlineExceeded
        ]
    );
    assert_eq!(polled.load(Ordering::SeqCst) - polled_before, 4);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_counted_from_the_first_poll_not_from_creation() {
    let fan_out = FanOut::new().deadline(Duration::from_millis(500));
    let pending = fan_out.settle([async {
        sleep(Duration::from_millis(400)).await;
        Ok::<_, ()>(())
    }]);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(pending.await, [Settled::Ok(())]);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_timeout_is_a_timeout_and_a_later_one_loses_to_the_deadline() {
    let hang = || async { std::future::pending::<Result<(), ()>>().await };
    let settled = FanOut::new()
        .timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(2))
        .settle([hang()])
        .await;
    assert_eq!(settled, [Settled::TimedOut]);

    let started = Instant::now();
    let settled = FanOut::new()
        .timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(2))
        .settle([hang(), hang()])
        .await;
    assert_eq!(
        settled,
        [Settled::DeadlineExceeded, Settled::DeadlineExceeded]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_alone_stops_inputs_without_a_timeout() {
    let started = Instant::now();
    let settled = FanOut::new()
        .deadline(Duration::from_millis(750))
        .settle([
            Box::pin(async { Ok::<_, ()>(1) }) as futures_util::future::BoxFuture<'_, _>,
            Box::pin(std::future::pending()),
        ])
        .await;
    assert_eq!(settled, [Settled::Ok(1), Settled::DeadlineExceeded]);
    assert_eq!(started.elapsed(), Duration::from_millis(750));
}

#[tokio::test(start_paused = true)]
async fn nothing_starts_when_a_slot_frees_exactly_at_the_deadline() {
    // Sequential, deadline 1 s, the first input takes exactly 1 s: it
    // succeeds (it is polled before the deadline is checked), and the
    // second is never started: no request sent, no permit taken.
    let started_inputs = Arc::new(AtomicUsize::new(0));
    let limiter = Arc::new(tokio::sync::Semaphore::new(1));
    let inputs = (0..2).map(|i| {
        let started_inputs = Arc::clone(&started_inputs);
        async move {
            started_inputs.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_secs(1)).await;
            Ok::<_, ()>(i)
        }
    });
    let fan_out = FanOut::new()
        .deadline(Duration::from_secs(1))
        .sequential()
        .limiter(Arc::clone(&limiter));
    let started = Instant::now();
    let settled = fan_out.settle(inputs).await;
    assert_eq!(settled, [Settled::Ok(0), Settled::DeadlineExceeded]);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(started_inputs.load(Ordering::SeqCst), 1);
    assert_eq!(limiter.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_deadline_still_gives_the_first_wave_its_first_poll() {
    // As with a zero timeout: an input ready when first polled succeeds.
    // Only the inputs the fan-out's first poll starts get that poll; with
    // one slot, the second would start after the deadline, so it does not
    // (the same in virtual time as in real time, where the clock moves).
    let ready = || [1, 2].map(|i| async move { Ok::<_, ()>(i) });
    let all_at_once = FanOut::new().deadline(Duration::ZERO);
    assert_eq!(
        all_at_once.settle(ready()).await,
        [Settled::Ok(1), Settled::Ok(2)]
    );
    let one_slot = FanOut::new().deadline(Duration::ZERO).sequential();
    assert_eq!(
        one_slot.settle(ready()).await,
        [Settled::Ok(1), Settled::DeadlineExceeded]
    );
    let pending = all_at_once
        .settle([std::future::pending::<Result<u8, ()>>()])
        .await;
    assert_eq!(pending, [Settled::DeadlineExceeded]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_ties_with_the_deadline_is_a_timeout_whatever_the_limits() {
    let never = || (0..3).map(|_| std::future::pending::<Result<u8, ()>>());
    let plain = FanOut::new()
        .timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(1));
    let limited = plain.clone().concurrency(NonZeroUsize::new(3).unwrap());
    let expected = [Settled::TimedOut, Settled::TimedOut, Settled::TimedOut];
    assert_eq!(plain.settle(never()).await, expected);
    assert_eq!(limited.settle(never()).await, expected);
}

#[tokio::test(start_paused = true)]
async fn a_closed_limiter_at_a_zero_deadline_reports_every_input_as_limiter_closed() {
    let limiter = Arc::new(tokio::sync::Semaphore::new(1));
    limiter.close();
    let fan_out = FanOut::new().deadline(Duration::ZERO).limiter(limiter);
    let inputs = (0..3).map(|i| async move { Ok::<_, ()>(i) });
    assert_eq!(
        fan_out.settle(inputs).await,
        [
            Settled::LimiterClosed,
            Settled::LimiterClosed,
            Settled::LimiterClosed
        ]
    );
}
