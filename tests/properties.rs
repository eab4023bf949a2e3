//! Property tests of the engine's invariants, in virtual time: whatever the
//! mix of inputs and limits, exactly one result per input, in input order,
//! each consistent with what the input did.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use fanout::{FanOut, Settled};
use futures_util::StreamExt;
use proptest::prelude::*;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ok,
    Err,
    Panic,
    Never,
}

#[derive(Clone, Copy, Debug)]
struct Input {
    kind: Kind,
    /// 10k or 10k + 1 ms: half the inputs tie exactly with a timeout or
    /// deadline (multiples of 10 ms), where an input that is ready at the
    /// instant it would be cut must still count as ready.
    latency: u64,
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop_oneof![
            Just(Kind::Ok),
            Just(Kind::Err),
            Just(Kind::Panic),
            Just(Kind::Never)
        ],
        prop_oneof![
            Just(0_u64),
            (0_u64..40).prop_map(|k| k * 10 + 1),
            (1_u64..40).prop_map(|k| k * 10),
        ],
    )
        .prop_map(|(kind, latency)| Input { kind, latency })
}

#[derive(Clone, Debug)]
struct Plan {
    timeout: Option<u64>,
    deadline: Option<u64>,
    concurrency: Option<usize>,
    limiter: Option<usize>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::option::of((0_u64..50).prop_map(|k| k * 10)),
        proptest::option::of((0_u64..100).prop_map(|k| k * 10)),
        proptest::option::of(1_usize..6),
        proptest::option::of(1_usize..6),
    )
        .prop_map(|(timeout, deadline, concurrency, limiter)| Plan {
            timeout,
            deadline,
            concurrency,
            limiter,
        })
}

fn fan_out(plan: &Plan) -> FanOut {
    let mut fan_out = FanOut::new();
    if let Some(ms) = plan.timeout {
        fan_out = fan_out.timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = plan.deadline {
        fan_out = fan_out.deadline(Duration::from_millis(ms));
    }
    if let Some(n) = plan.concurrency {
        fan_out = fan_out.concurrency(NonZeroUsize::new(n).unwrap());
    }
    if let Some(permits) = plan.limiter {
        fan_out = fan_out.limiter(Arc::new(Semaphore::new(permits)));
    }
    fan_out
}

async fn run_input(index: usize, input: Input) -> Result<usize, usize> {
    STARTS.with(|starts| {
        let mut starts = starts.borrow_mut();
        if let Some((origin, at)) = starts.as_mut() {
            at.push(Instant::now().duration_since(*origin));
        }
    });
    if input.latency > 0 {
        sleep(Duration::from_millis(input.latency)).await;
    }
    match input.kind {
        Kind::Ok => Ok(index),
        Kind::Err => Err(index),
        Kind::Panic => panic!("input {index} panicked"),
        Kind::Never => std::future::pending().await,
    }
}

thread_local! {
    /// When the fan-out started, and when (after that) each input was first
    /// polled; recorded only by `settle_recording_starts`.
    static STARTS: std::cell::RefCell<Option<(Instant, Vec<Duration>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `settle`, also returning how long after the fan-out's start each input
/// started.
fn settle_recording_starts(
    plan: &Plan,
    inputs: &[Input],
) -> (Vec<Settled<usize, usize>>, Vec<Duration>) {
    let runtime = paused_runtime();
    let fan_out = fan_out(plan);
    let settled = runtime.block_on(async {
        STARTS.with(|starts| *starts.borrow_mut() = Some((Instant::now(), Vec::new())));
        fan_out
            .settle(
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| run_input(i, *input)),
            )
            .await
    });
    let starts = STARTS.with(|starts| starts.borrow_mut().take().unwrap().1);
    (settled, starts)
}

fn settle(plan: &Plan, inputs: &[Input]) -> Vec<Settled<usize, usize>> {
    let runtime = paused_runtime();
    let fan_out = fan_out(plan);
    runtime.block_on(
        fan_out.settle(
            inputs
                .iter()
                .enumerate()
                .map(|(i, input)| run_input(i, *input)),
        ),
    )
}

/// What an input must settle as when every input starts at time zero.
fn expected_when_all_start_together(
    plan: &Plan,
    input: Input,
    index: usize,
) -> Settled<usize, usize> {
    let cut = match (plan.timeout, plan.deadline) {
        (Some(t), Some(d)) if t <= d => Some((t, Settled::TimedOut)),
        (_, Some(d)) => Some((d, Settled::DeadlineExceeded)),
        (Some(t), None) => Some((t, Settled::TimedOut)),
        (None, None) => None,
    };
    let ends = match input.kind {
        Kind::Ok => Settled::Ok(index),
        Kind::Err => Settled::Err(index),
        Kind::Panic => Settled::Panicked(format!("input {index} panicked")),
        Kind::Never => {
            return cut
                .map(|(_, s)| s)
                .expect("never-ending inputs only run under a limit");
        }
    };
    match cut {
        Some((at, cut)) if input.latency > at => cut,
        _ => ends,
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The inputs, with never-ending ones made to succeed when nothing in the
/// plan would stop them.
fn stoppable(plan: &Plan, inputs: Vec<Input>) -> Vec<Input> {
    let unbounded = plan.timeout.is_none() && plan.deadline.is_none();
    inputs
        .into_iter()
        .map(|i| {
            if i.kind == Kind::Never && unbounded {
                Input {
                    kind: Kind::Ok,
                    ..i
                }
            } else {
                i
            }
        })
        .collect()
}

fn quiet_panics() {
    // The inputs panic on purpose; keep the test output readable.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planted = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|message| message.starts_with("input "));
            if !planted {
                default(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn one_result_per_input_in_order_consistent_with_the_input(
        inputs in proptest::collection::vec(input(), 0..24),
        plan in plan(),
    ) {
        quiet_panics();
        // Nothing would ever stop a never-ending input.
        let inputs = stoppable(&plan, inputs);
        let settled = settle(&plan, &inputs);
        prop_assert_eq!(settled.len(), inputs.len());

        for (index, (input, result)) in inputs.iter().zip(&settled).enumerate() {
            match result {
                Settled::Ok(i) => prop_assert!(*i == index && input.kind == Kind::Ok),
                Settled::Err(i) => prop_assert!(*i == index && input.kind == Kind::Err),
                Settled::Panicked(message) => {
                    prop_assert_eq!(message, &format!("input {index} panicked"));
                    prop_assert_eq!(input.kind, Kind::Panic);
                }
                Settled::TimedOut => prop_assert!(plan.timeout.is_some()),
                Settled::DeadlineExceeded => prop_assert!(plan.deadline.is_some()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            // A ready input never times out.
            if input.latency == 0 && input.kind != Kind::Never {
                prop_assert!(!matches!(result, Settled::TimedOut), "ready input {} timed out", index);
            }
        }

        if plan.concurrency.is_none() && plan.limiter.is_none() {
            for (index, (input, result)) in inputs.iter().zip(&settled).enumerate() {
                prop_assert_eq!(result, &expected_when_all_start_together(&plan, *input, index), "input {}", index);
            }
        }
    }

    #[test]
    fn the_stream_yields_each_input_once_with_the_same_results_as_settle(
        inputs in proptest::collection::vec(input(), 0..24),
        plan in plan(),
    ) {
        quiet_panics();
        let inputs = stoppable(&plan, inputs);
        let runtime = paused_runtime();
        let fan_out = fan_out(&plan);
        let streamed: Vec<(usize, Settled<usize, usize>)> = runtime.block_on(
            fan_out
                .stream(inputs.iter().enumerate().map(|(i, input)| run_input(i, *input)))
                .collect(),
        );
        let mut by_index = streamed.clone();
        by_index.sort_by_key(|(index, _)| *index);
        let indices: Vec<usize> = by_index.iter().map(|(index, _)| *index).collect();
        prop_assert_eq!(indices, (0..inputs.len()).collect::<Vec<_>>());
        let results: Vec<_> = by_index.into_iter().map(|(_, settled)| settled).collect();
        prop_assert_eq!(results, settle(&plan, &inputs));
    }

    #[test]
    fn nothing_starts_at_or_after_the_deadline(
        inputs in proptest::collection::vec(input(), 0..16),
        plan in plan(),
    ) {
        quiet_panics();
        let inputs = stoppable(&plan, inputs);
        let (settled, starts) = settle_recording_starts(&plan, &inputs);
        prop_assert_eq!(settled.len(), inputs.len());
        if let Some(deadline) = plan.deadline.map(Duration::from_millis) {
            for at in &starts {
                // The first wave starts with the fan-out, even at a zero
                // deadline; nothing else starts at or after it.
                prop_assert!(at.is_zero() || *at < deadline, "an input started at {:?}, deadline {:?}", at, deadline);
            }
            let never_started = settled.len() - starts.len();
            let cut = settled.iter().filter(|s| matches!(s, Settled::DeadlineExceeded)).count();
            prop_assert!(never_started <= cut);
        }
    }

    #[test]
    fn a_limit_that_never_binds_changes_nothing(
        inputs in proptest::collection::vec(input(), 0..16),
        plan in plan(),
    ) {
        // With a concurrency limit of at least the number of inputs, every
        // input still starts at once, but each gets its own timer: the
        // results, exact ties included, must be those of the shared timer.
        quiet_panics();
        let inputs = stoppable(&plan, inputs);
        let unlimited = Plan { concurrency: None, limiter: None, ..plan.clone() };
        let roomy = Plan { concurrency: Some(inputs.len().max(1)), limiter: None, ..plan };
        prop_assert_eq!(settle(&unlimited, &inputs), settle(&roomy, &inputs));
    }

    #[test]
    fn sequential_gives_the_same_results_as_concurrent(
        inputs in proptest::collection::vec(input(), 0..16),
    ) {
        quiet_panics();
        let inputs: Vec<Input> = inputs
            .into_iter()
            .map(|i| if i.kind == Kind::Never { Input { kind: Kind::Ok, ..i } } else { i })
            .collect();
        let unlimited = Plan { timeout: None, deadline: None, concurrency: None, limiter: None };
        let sequential = Plan { concurrency: Some(1), ..unlimited.clone() };
        prop_assert_eq!(settle(&unlimited, &inputs), settle(&sequential, &inputs));
    }
}
