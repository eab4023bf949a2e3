//! A panic in any hook a fan-out calls is contained to its own query: in
//! `run`, in a `Drop` (of a query's future or of its stale lookup), in
//! `name()`, `timeout()`, `stale()`. Where no value can exist at all (a
//! failed query whose `fallback()` panics), the panic is resumed.

use std::sync::Once;
use std::time::Duration;

use fanout::{DashboardQuery, Failure, FanOut, QueryContext, Settled, Source, TenantId};
use futures_util::FutureExt;
use tokio::time::sleep;

/// Which hook of [`Faulty`] panics.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Name,
    Timeout,
    /// The query's future panics when dropped (after a 50 ms run that
    /// succeeds, or when it is cut by its 100 ms timeout).
    DropAfterSuccess,
    DropWhenCut,
    /// `stale()` panics while building its future, or while polled, or its
    /// future panics when dropped (the lookup never answers; it is cut).
    StaleCall,
    StalePoll,
    StaleDrop,
    /// The lookup finds a value, then its future panics when dropped.
    StaleFoundThenDrop,
    Fallback,
}

struct Faulty {
    fault: Fault,
}

/// Panics when dropped.
struct Bomb(&'static str);

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("{}", self.0);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("query failed")]
struct Failed;

impl DashboardQuery for Faulty {
    type Output = i64;
    type Error = Failed;

    fn name(&self) -> &'static str {
        if self.fault == Fault::Name {
            panic!("name exploded");
        }
        "faulty"
    }

    fn timeout(&self) -> Option<Duration> {
        if self.fault == Fault::Timeout {
            panic!("timeout exploded");
        }
        Some(Duration::from_millis(100))
    }

    fn run(&self, _ctx: QueryContext) -> impl Future<Output = Result<i64, Failed>> + Send {
        let fault = self.fault;
        let work = Box::pin(async move {
            match fault {
                Fault::DropAfterSuccess => {
                    sleep(Duration::from_millis(50)).await;
                    Ok(7)
                }
                Fault::DropWhenCut => std::future::pending().await,
                Fault::StaleCall
                | Fault::StalePoll
                | Fault::StaleDrop
                | Fault::StaleFoundThenDrop
                | Fault::Fallback => Err(Failed),
                Fault::None | Fault::Name | Fault::Timeout => Ok(7),
            }
        });
        let bomb = match fault {
            Fault::DropAfterSuccess => Some(Bomb("dropped after success")),
            Fault::DropWhenCut => Some(Bomb("dropped when cut")),
            _ => None,
        };
        // The bomb lives beside the work, not in it: it goes off when the
        // fan-out drops the finished (or cut) future, not while polling.
        Armed { work, _bomb: bomb }
    }

    fn fallback(&self) -> i64 {
        if self.fault == Fault::Fallback {
            panic!("fallback exploded");
        }
        -1
    }

    fn stale(&self, _tenant: &TenantId) -> impl Future<Output = Option<(i64, Duration)>> + Send {
        if self.fault == Fault::StaleCall {
            panic!("stale exploded");
        }
        let fault = self.fault;
        let bomb = (fault == Fault::StaleFoundThenDrop).then_some(Bomb("stale dropped"));
        let work = Box::pin(async move {
            match fault {
                Fault::StalePoll => panic!("stale poll exploded"),
                Fault::StaleDrop => {
                    let _bomb = Bomb("stale dropped");
                    std::future::pending().await
                }
                Fault::StaleFoundThenDrop => Some((9, Duration::from_secs(60))),
                _ => None,
            }
        });
        Armed { work, _bomb: bomb }
    }
}

/// A future that owns a [`Bomb`] beside its work.
struct Armed<F> {
    work: std::pin::Pin<Box<F>>,
    _bomb: Option<Bomb>,
}

impl<F: Future> Future for Armed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.work.as_mut().poll(cx)
    }
}

/// The panics the tests plant; any other panic (a failed assertion) is
/// printed as usual.
const PLANTED: [&str; 9] = [
    "name exploded",
    "timeout exploded",
    "dropped after success",
    "dropped when cut",
    "dropped unstarted",
    "stale exploded",
    "stale poll exploded",
    "stale dropped",
    "fallback exploded",
];

fn quiet_panics() {
    // The hooks panic on purpose; keep the test output readable.
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planted = info
                .payload()
                .downcast_ref::<&str>()
                .map(|m| m.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .is_some_and(|m| PLANTED.contains(&m.as_str()));
            if !planted {
                default(info);
            }
        }));
    });
}

fn tenant() -> TenantId {
    TenantId::new("t1").unwrap()
}

/// Runs `fault` beside a healthy sibling, as a tuple and as a `Vec`, and
/// checks the sibling is intact; returns the faulty query's outcome source
/// and value (from the tuple run).
async fn beside_a_sibling(fault: Fault) -> (Source, i64) {
    quiet_panics();
    let fan_out = FanOut::new().deadline(Duration::from_secs(1));
    let (faulty, sibling) = fan_out
        .run(&tenant(), (Faulty { fault }, Faulty { fault: Fault::None }))
        .await;
    assert!(sibling.is_fresh(), "{fault:?}: {:?}", sibling.source);
    assert_eq!(sibling.value, 7);

    let slice = fan_out
        .run(
            &tenant(),
            vec![Faulty { fault }, Faulty { fault: Fault::None }],
        )
        .await;
    assert!(
        slice[1].is_fresh(),
        "{fault:?} (vec): {:?}",
        slice[1].source
    );
    assert_eq!(slice[0].source.label(), faulty.source.label(), "{fault:?}");
    (faulty.source, faulty.value)
}

fn panicked_with(source: &Source, expected: &str) -> bool {
    matches!(source, Source::Fallback(Failure::Panicked(message)) if message.contains(expected))
}

#[tokio::test(start_paused = true)]
async fn a_name_that_panics_fails_only_its_query() {
    let (source, value) = beside_a_sibling(Fault::Name).await;
    assert!(panicked_with(&source, "name exploded"), "{source:?}");
    assert_eq!(value, -1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_panics_fails_only_its_query() {
    let (source, _) = beside_a_sibling(Fault::Timeout).await;
    assert!(panicked_with(&source, "timeout exploded"), "{source:?}");
}

#[tokio::test(start_paused = true)]
async fn a_future_whose_drop_panics_fails_only_its_query() {
    let (source, _) = beside_a_sibling(Fault::DropAfterSuccess).await;
    assert!(
        panicked_with(&source, "dropped after success"),
        "{source:?}"
    );
    let (source, _) = beside_a_sibling(Fault::DropWhenCut).await;
    assert!(panicked_with(&source, "dropped when cut"), "{source:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stale_lookup_that_panics_means_no_stale_value() {
    for fault in [
        Fault::StaleCall,
        Fault::StalePoll,
        Fault::StaleDrop,
        Fault::StaleFoundThenDrop,
    ] {
        let (source, value) = beside_a_sibling(fault).await;
        assert!(
            matches!(source, Source::Fallback(Failure::Error(_))),
            "{fault:?}: {source:?}"
        );
        assert_eq!(value, -1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_fallback_that_panics_is_resumed_after_logging() {
    quiet_panics();
    let fan_out = FanOut::new().deadline(Duration::from_secs(1));
    let t1 = tenant();
    let run = fan_out.run(
        &t1,
        (
            Faulty {
                fault: Fault::Fallback,
            },
            Faulty { fault: Fault::None },
        ),
    );
    let payload = std::panic::AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .expect_err("no value exists for a failed query whose fallback panics");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"fallback exploded"));
}

#[tokio::test(start_paused = true)]
async fn a_plain_input_whose_drop_panics_is_contained_in_settle() {
    quiet_panics();
    let cut = Armed {
        work: Box::pin(std::future::pending::<Result<u8, ()>>()),
        _bomb: Some(Bomb("dropped when cut")),
    }
    .boxed();
    let fine = async { Ok::<u8, ()>(2) }.boxed();
    let settled = FanOut::new()
        .timeout(Duration::from_millis(100))
        .settle([cut, fine])
        .await;
    assert_eq!(
        settled,
        [Settled::Panicked("dropped when cut".into()), Settled::Ok(2)]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_fan_out_whose_inputs_panic_on_drop_does_not_panic() {
    quiet_panics();
    let fan_out = FanOut::new();
    let t1 = tenant();
    let run = fan_out.run(
        &t1,
        (
            Faulty {
                fault: Fault::DropWhenCut,
            },
            Faulty {
                fault: Fault::DropWhenCut,
            },
        ),
    );
    // Polled until both queries are in flight, then cancelled: the caller
    // hanging up must not turn into a panic in its task.
    let mut run = Box::pin(run);
    assert!(futures_util::poll!(run.as_mut()).is_pending());
    drop(run);
}

#[tokio::test(start_paused = true)]
async fn a_never_started_input_whose_drop_panics_is_contained() {
    quiet_panics();
    // Sequential under a 1 s deadline: the second input never starts, and
    // dropping it unstarted panics.
    let slow = async {
        sleep(Duration::from_secs(2)).await;
        Ok::<u8, ()>(1)
    }
    .boxed();
    let unstarted = Armed {
        work: Box::pin(async { Ok::<u8, ()>(2) }),
        _bomb: Some(Bomb("dropped unstarted")),
    }
    .boxed();
    let settled = FanOut::new()
        .deadline(Duration::from_secs(1))
        .sequential()
        .settle([slow, unstarted])
        .await;
    assert_eq!(
        settled,
        [
            Settled::DeadlineExceeded,
            Settled::Panicked("dropped unstarted".into())
        ]
    );

    // A fan-out dropped before it started them drops them too: logged, not
    // propagated.
    let waiting = Armed {
        work: Box::pin(async { Ok::<u8, ()>(3) }),
        _bomb: Some(Bomb("dropped unstarted")),
    }
    .boxed();
    let first = async { std::future::pending::<Result<u8, ()>>().await }.boxed();
    let fan_out = FanOut::new().sequential();
    let mut settle = Box::pin(fan_out.settle([first, waiting]));
    assert!(futures_util::poll!(settle.as_mut()).is_pending());
    drop(settle);
}
