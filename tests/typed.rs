//! The typed path of a tuple dashboard, where its failure paths differ from
//! a `Vec`'s: each query is held in place in the fan-out's own future, not
//! boxed in a task of its own. Dropping, stalling and exact ties.

mod support;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::Once;
use std::time::Duration;

use fanout::{DashboardQuery, FairLimiter, FanOut, Outcome, QueryContext, TenantId};
use futures_util::poll;
use support::{Ending, Scripted};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

fn tenant() -> TenantId {
    TenantId::new("t1").unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A query that never answers and whose future panics when dropped.
struct Explodes;

struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("dropped while cancelled");
        }
    }
}

impl DashboardQuery for Explodes {
    type Output = i64;
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "explodes"
    }

    async fn run(&self, _ctx: QueryContext) -> Result<i64, std::io::Error> {
        let _bomb = Bomb;
        std::future::pending().await
    }

    fn fallback(&self) -> i64 {
        -1
    }
}

fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planted = info.payload().downcast_ref::<&str>() == Some(&"dropped while cancelled")
                || info.payload().downcast_ref::<String>().map(String::as_str)
                    == Some("dropped while cancelled");
            if !planted {
                default(info);
            }
        }));
    });
}

fn labels<const N: usize>(outcomes: [&Outcome<i64>; N]) -> [&'static str; N] {
    outcomes.map(|outcome| outcome.source.label())
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_tuple_whose_query_panics_on_drop_releases_its_permits() {
    quiet_panics();
    let limiter = Arc::new(Semaphore::new(2));
    let fan_out = FanOut::new().limiter(Arc::clone(&limiter));
    let hanging = Scripted::new("hanging", 0).ending(Ending::Hang);
    let waiting = Scripted::new("waiting", 0);
    let tenant = tenant();
    let mut run = Box::pin(fan_out.run(&tenant, (Explodes, &hanging, &waiting)));
    assert!(poll!(run.as_mut()).is_pending());
    assert_eq!(limiter.available_permits(), 0); // two started, one waits
    drop(run); // the `Drop` that panics is contained and logged
    assert_eq!(limiter.available_permits(), 2);
    assert_eq!(waiting.runs(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_tuple_leaves_the_fair_limiter_as_it_found_it() {
    let limiter = FairLimiter::new(2);
    let fan_out = FanOut::new().fair_limiter(limiter.clone());
    let hang = || Scripted::new("hanging", 0).ending(Ending::Hang);
    let tenant = tenant();
    let mut run = Box::pin(fan_out.run(&tenant, (hang(), hang(), hang())));
    assert!(poll!(run.as_mut()).is_pending());
    assert_eq!(limiter.available(), 0);
    drop(run);
    assert_eq!(
        (limiter.available(), limiter.queued(), limiter.tenants()),
        (2, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_tuple_never_polled_again_while_it_waits_holds_up_only_its_place() {
    // A tuple fan-out joins the semaphore's queue and its task stalls: the
    // permit freed next is its (FIFO), and dropping it hands it on at once.
    let limiter = Arc::new(Semaphore::new(1));
    let fan_out = FanOut::new().limiter(Arc::clone(&limiter));
    let tenant = tenant();
    let hog = Scripted::new("hog", 100);
    let stalled_query = Scripted::new("stalled", 0);
    let next = Scripted::new("next", 10);
    let mut hog_run = Box::pin(fan_out.run(&tenant, (&hog,)));
    assert!(poll!(hog_run.as_mut()).is_pending());
    let mut stalled = Box::pin(fan_out.run(&tenant, (&stalled_query,)));
    assert!(poll!(stalled.as_mut()).is_pending()); // queued behind the hog
    let started = Instant::now();
    let (next_outcome, (hog_outcome,)) = tokio::join!(
        async {
            sleep(ms(150)).await; // the hog is done; its permit went to `stalled`
            assert_eq!(limiter.available_permits(), 0);
            drop(stalled);
            fan_out.run(&tenant, (&next,)).await.0
        },
        hog_run.as_mut(),
    );
    assert!(hog_outcome.is_fresh() && next_outcome.is_fresh());
    assert_eq!(started.elapsed(), ms(160));
    assert_eq!(stalled_query.runs(), 0);
    assert_eq!(limiter.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_tuple_at_an_exact_tie_with_the_deadline_ends_as_a_vec_does() {
    let deadline = FanOut::new().deadline(ms(1000));
    let at_the_deadline = Scripted::new("at_the_deadline", 1000);
    let after = Scripted::new("after", 0);
    let late = Scripted::new("late", 1001);

    // Every query starts at once: the one ready exactly at the deadline is
    // polled before the deadline is checked, and answers.
    let (a, b) = deadline.run(&tenant(), (&at_the_deadline, &late)).await;
    assert_eq!(labels([&a, &b]), ["fresh", "deadline_exceeded"]);
    let vec = deadline.run(&tenant(), vec![&at_the_deadline, &late]).await;
    assert_eq!(labels([&vec[0], &vec[1]]), ["fresh", "deadline_exceeded"]);

    // One at a time: a slot that frees exactly at the deadline starts
    // nothing.
    let sequential = deadline.clone().sequential();
    let (a, b) = sequential.run(&tenant(), (&at_the_deadline, &after)).await;
    assert_eq!(labels([&a, &b]), ["fresh", "deadline_exceeded"]);
    assert_eq!(after.runs(), 0);
    assert_eq!(b.waited, ms(1000));

    // A timeout that ties with the deadline is a timeout, whatever the
    // limits.
    let tie = FanOut::new().timeout(ms(1000)).deadline(ms(1000));
    let hang = || Scripted::new("hang", 0).ending(Ending::Hang);
    let (a, b) = tie.run(&tenant(), (hang(), hang())).await;
    assert_eq!(labels([&a, &b]), ["timed_out", "timed_out"]);
    let limited = tie.concurrency(NonZeroUsize::new(2).unwrap());
    let (a, b) = limited.run(&tenant(), (hang(), hang())).await;
    assert_eq!(labels([&a, &b]), ["timed_out", "timed_out"]);
}

#[tokio::test(start_paused = true)]
async fn a_tuple_under_a_limit_starts_each_query_as_a_slot_frees() {
    // Three queries, two slots: the third starts when the first ends, its
    // own timeout counted from then, and it shows how long it waited.
    let fan_out = FanOut::new()
        .timeout(ms(250))
        .concurrency(NonZeroUsize::new(2).unwrap());
    let started = Instant::now();
    let (a, b, c) = fan_out
        .run(
            &tenant(),
            (
                Scripted::new("a", 100),
                Scripted::new("b", 300),
                Scripted::new("c", 200),
            ),
        )
        .await;
    assert_eq!(labels([&a, &b, &c]), ["fresh", "timed_out", "fresh"]);
    assert_eq!((a.waited, b.waited, c.waited), (ms(0), ms(0), ms(100)));
    assert_eq!(
        (a.elapsed, b.elapsed, c.elapsed),
        (ms(100), ms(250), ms(200))
    );
    assert_eq!(started.elapsed(), ms(300));
}
