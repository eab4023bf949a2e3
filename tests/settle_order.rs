//! `settle` and the free functions: one result per input, in input order,
//! whatever the mix; edge durations; zero inputs.

use std::time::Duration;

use fanout::{FanOut, Settled, join_all_settled_with_timeout, join_all_with_defaults};
use futures_util::future::BoxFuture;
use tokio::time::{Instant, sleep};

type Input = BoxFuture<'static, Result<u32, String>>;

fn ok_after(ms: u64, value: u32) -> Input {
    Box::pin(async move {
        sleep(Duration::from_millis(ms)).await;
        Ok(value)
    })
}

fn err_after(ms: u64, message: &'static str) -> Input {
    Box::pin(async move {
        sleep(Duration::from_millis(ms)).await;
        Err(message.to_owned())
    })
}

fn panic_after(ms: u64) -> Input {
    Box::pin(async move {
        sleep(Duration::from_millis(ms)).await;
        panic!("input blew up");
    })
}

fn never() -> Input {
    Box::pin(std::future::pending())
}

#[tokio::test(start_paused = true)]
async fn results_come_back_in_input_order_whatever_the_completion_order() {
    let inputs = vec![
        ok_after(300, 1),
        err_after(100, "bad"),
        never(),
        panic_after(50),
        ok_after(0, 5),
    ];
    let started = Instant::now();
    let settled = join_all_settled_with_timeout(inputs, Duration::from_secs(1)).await;
    assert_eq!(
        settled,
        [
            Settled::Ok(1),
            Settled::Err("bad".to_owned()),
            Settled::TimedOut,
            Settled::Panicked("input blew up".to_owned()),
            Settled::Ok(5),
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn zero_inputs_return_at_once() {
    let started = Instant::now();
    let settled = join_all_settled_with_timeout(Vec::<Input>::new(), Duration::from_secs(1)).await;
    assert!(settled.is_empty());
    let values: Vec<u32> = join_all_with_defaults(Vec::<(Input, u32)>::new()).await;
    assert!(values.is_empty());
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_ready_input_succeeds_even_with_a_zero_timeout() {
    let inputs = vec![
        ok_after(0, 1),
        ok_after(1, 2),
        Box::pin(async { Ok::<u32, String>(3) }) as Input,
    ];
    let settled = join_all_settled_with_timeout(inputs, Duration::ZERO).await;
    assert_eq!(settled, [Settled::Ok(1), Settled::TimedOut, Settled::Ok(3)]);

    // The same under a concurrency limit, where each input has its own timer.
    let limited = FanOut::new()
        .timeout(Duration::ZERO)
        .deadline(Duration::ZERO)
        .sequential();
    let settled = limited.settle([ok_after(0, 1), ok_after(1, 2)]).await;
    assert_eq!(settled[0], Settled::Ok(1));
    assert!(!settled[1].is_ok());
}

#[tokio::test(start_paused = true)]
async fn huge_durations_neither_panic_nor_overflow() {
    for huge in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 2),
        Duration::from_secs(100 * 365 * 86_400),
    ] {
        let fan_out = FanOut::new().timeout(huge).deadline(huge);
        let settled = fan_out.settle([ok_after(10, 1), err_after(20, "e")]).await;
        assert_eq!(settled, [Settled::Ok(1), Settled::Err("e".to_owned())]);
        let settled = fan_out.clone().sequential().settle([ok_after(10, 1)]).await;
        assert_eq!(settled, [Settled::Ok(1)]);
    }
}

#[tokio::test(start_paused = true)]
async fn with_defaults_replaces_every_kind_of_failure() {
    let fan_out = FanOut::new().timeout(Duration::from_secs(1));
    let pairs = vec![
        (ok_after(10, 1), 100),
        (err_after(10, "bad"), 200),
        (never(), 300),
        (panic_after(10), 400),
    ];
    assert_eq!(fan_out.with_defaults(pairs).await, [1, 200, 300, 400]);
}

#[tokio::test(start_paused = true)]
async fn join_all_with_defaults_has_no_timeout_of_its_own() {
    let started = Instant::now();
    let values =
        join_all_with_defaults([(ok_after(3_600_000, 1), 0), (err_after(5, "x"), 7)]).await;
    assert_eq!(values, [1, 7]);
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn inputs_may_borrow_from_the_caller() {
    let rows = vec![10_u32, 20, 30];
    let lookups = (0..4).map(|i| {
        let rows = &rows;
        async move { rows.get(i).copied().ok_or(i) }
    });
    let settled = FanOut::new().settle(lookups).await;
    assert_eq!(
        settled,
        [
            Settled::Ok(10),
            Settled::Ok(20),
            Settled::Ok(30),
            Settled::Err(3)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn many_inputs_under_one_shared_timer_are_practical() {
    let n = 100_000;
    let inputs = (0..n).map(|i| async move {
        if i % 10 == 0 {
            sleep(Duration::from_secs(5)).await;
        } else if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
        Ok::<_, ()>(i)
    });
    let settled = join_all_settled_with_timeout(inputs, Duration::from_secs(1)).await;
    assert_eq!(settled.len(), n);
    for (i, s) in settled.iter().enumerate() {
        if i % 10 == 0 {
            assert_eq!(s, &Settled::TimedOut);
        } else {
            assert_eq!(s, &Settled::Ok(i));
        }
    }
}

/// An iterator whose size hint claims more items than it yields.
struct Overstated<I>(I, usize);

impl<I: Iterator> Iterator for Overstated<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

#[tokio::test(start_paused = true)]
async fn a_size_hint_that_overstates_is_only_a_hint() {
    // Before: slots were sized from the lower bound and every slot was
    // expected filled, so this panicked.
    let inputs = Overstated(
        [1_u8, 2].map(|i| async move { Ok::<_, ()>(i) }).into_iter(),
        5,
    );
    let settled = FanOut::new().settle(inputs).await;
    assert_eq!(settled, [Settled::Ok(1), Settled::Ok(2)]);
    // A lower bound past any real length allocates nothing for it.
    let huge = Overstated(std::iter::once(async { Ok::<u8, ()>(9) }), usize::MAX);
    assert_eq!(FanOut::new().settle(huge).await, [Settled::Ok(9)]);
    let empty = Overstated(std::iter::empty::<std::future::Ready<Result<u8, ()>>>(), 3);
    assert!(FanOut::new().settle(empty).await.is_empty());
}
