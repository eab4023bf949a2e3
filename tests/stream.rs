//! `FanOut::stream`: results in completion order, each input exactly once,
//! under the same limits as `settle`; dropping the stream cancels.

mod support;

use std::num::NonZeroUsize;
use std::time::Duration;

use fanout::{FanOut, Settled};
use futures_util::StreamExt;
use support::DropCounter;
use tokio::time::{Instant, sleep};

async fn after(ms: u64) -> Result<u64, ()> {
    sleep(Duration::from_millis(ms)).await;
    Ok(ms)
}

#[tokio::test(start_paused = true)]
async fn fast_results_arrive_first_each_at_its_own_time() {
    let started = Instant::now();
    let mut stream = FanOut::new()
        .timeout(Duration::from_secs(2))
        .stream([350, 150, 250, 3_000].map(after));
    let mut arrivals = Vec::new();
    while let Some((index, settled)) = stream.next().await {
        arrivals.push((index, settled, started.elapsed().as_millis()));
    }
    assert_eq!(
        arrivals,
        [
            (1, Settled::Ok(150), 150),
            (2, Settled::Ok(250), 250),
            (0, Settled::Ok(350), 350),
            (3, Settled::TimedOut, 2000),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_and_limit_apply_as_in_settle() {
    let fan_out = FanOut::new()
        .deadline(Duration::from_millis(500))
        .concurrency(NonZeroUsize::new(2).unwrap());
    let streamed: Vec<_> = fan_out
        .stream([400, 400, 400, 150].map(after))
        .collect()
        .await;
    assert_eq!(
        streamed,
        [
            (0, Settled::Ok(400)),
            (1, Settled::Ok(400)),
            (2, Settled::DeadlineExceeded),
            (3, Settled::DeadlineExceeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_cancels_what_is_still_running() {
    let drops = DropCounter::default();
    let inputs: Vec<_> = [10_u64, 1_000, 2_000]
        .into_iter()
        .map(|ms| {
            let guard = drops.guard();
            async move {
                let _guard = guard;
                sleep(Duration::from_millis(ms)).await;
                Ok::<_, ()>(ms)
            }
        })
        .collect();
    let mut stream = FanOut::new().stream(inputs);
    assert_eq!(stream.next().await, Some((0, Settled::Ok(10))));
    assert_eq!(drops.dropped(), 1);
    drop(stream);
    assert_eq!(drops.dropped(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_empty_stream_ends_at_once() {
    let mut stream = FanOut::new().stream(Vec::<std::future::Ready<Result<(), ()>>>::new());
    assert_eq!(stream.next().await, None);
}
