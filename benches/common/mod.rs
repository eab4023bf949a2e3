//! What the benches share: the input kinds and the hand-written baseline
//! every ratio is taken to, so each bench measures against the same code.
#![allow(dead_code)] // each bench uses part of this module

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{error::Elapsed, timeout};

pub mod cached;

/// The per-input timeout of every bench: never reached.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Ready on its first poll.
pub async fn ready(i: u64) -> Result<u64, u64> {
    Ok(i)
}

/// Pending once: a wake-up, and under a timeout a timer.
pub async fn yield_once(i: u64) -> Result<u64, u64> {
    tokio::task::yield_now().await;
    Ok(i)
}

/// Ready, every tenth input an error.
pub async fn mixed(i: u64) -> Result<u64, u64> {
    if i % 10 == 9 { Err(i) } else { Ok(i) }
}

/// The baseline: `FuturesUnordered` of `(index, timeout(input))`, results
/// put back in input order through a `Vec<Option<_>>`.
pub async fn futures_unordered_timeout<F, Fut>(
    n: usize,
    make: F,
) -> Vec<Result<Fut::Output, Elapsed>>
where
    F: Fn(u64) -> Fut,
    Fut: Future,
{
    let mut in_flight = FuturesUnordered::new();
    for (index, input) in (0..n as u64).map(make).enumerate() {
        in_flight.push(timeout(TIMEOUT, input).map(move |result| (index, result)));
    }
    let mut slots: Vec<Option<_>> = Vec::with_capacity(n);
    slots.resize_with(n, || None);
    while let Some((index, result)) = in_flight.next().await {
        slots[index] = Some(result);
    }
    slots
        .into_iter()
        .map(|slot| slot.expect("every input settles"))
        .collect()
}
