//! The reference dashboard from the spec, in virtual time.

mod support;

use std::time::Duration;

use fanout::{Failure, FanOut, Outcome, Source, TenantId};
use support::{Ending, Scripted, reference_dashboard};
use tokio::time::Instant;

fn reference_fan_out() -> FanOut {
    FanOut::new()
        .timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(3))
}

fn tenant() -> TenantId {
    TenantId::new("creche-042").unwrap()
}

fn values(outcomes: &[&Outcome<i64>]) -> Vec<i64> {
    outcomes.iter().map(|o| o.value).collect()
}

#[tokio::test(start_paused = true)]
async fn concurrent_dashboard_costs_the_slowest_query() {
    let started = Instant::now();
    let (a, b, c, d, e, f) = reference_fan_out()
        .run(&tenant(), reference_dashboard())
        .await;
    assert_eq!(started.elapsed(), Duration::from_millis(350));
    assert_eq!(
        values(&[&a, &b, &c, &d, &e, &f]),
        [250, 200, 150, 300, 350, 250]
    );
    for outcome in [&a, &b, &c, &d, &e, &f] {
        assert!(outcome.is_fresh());
        assert_eq!(outcome.elapsed.as_millis() as i64, outcome.value);
    }
}

#[tokio::test(start_paused = true)]
async fn sequential_dashboard_costs_the_sum_and_gives_the_same_values() {
    let started = Instant::now();
    let (a, b, c, d, e, f) = reference_fan_out()
        .sequential()
        .run(&tenant(), reference_dashboard())
        .await;
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
    assert_eq!(
        values(&[&a, &b, &c, &d, &e, &f]),
        [250, 200, 150, 300, 350, 250]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_query_gets_its_fallback_and_the_rest_are_untouched() {
    let (revenue, outstanding, children, invoices, payments, arrears) = reference_dashboard();
    let arrears = arrears.ending(Ending::Fail);
    let started = Instant::now();
    let (a, b, c, d, e, f) = reference_fan_out()
        .run(
            &tenant(),
            (revenue, outstanding, children, invoices, payments, arrears),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_millis(350));
    assert_eq!(
        values(&[&a, &b, &c, &d, &e, &f]),
        [250, 200, 150, 300, 350, -1]
    );
    match &f.source {
        Source::Fallback(Failure::Error(error)) => assert_eq!(error.to_string(), "arrears failed"),
        other => panic!("expected an error fallback, got {other:?}"),
    }
    assert_eq!(f.elapsed, Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_query_is_cut_at_its_two_second_timeout() {
    let (revenue, outstanding, children, invoices, payments, arrears) = reference_dashboard();
    let payments = payments.ending(Ending::Hang);
    let started = Instant::now();
    let (a, b, c, d, e, f) = reference_fan_out()
        .run(
            &tenant(),
            (revenue, outstanding, children, invoices, payments, arrears),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(
        values(&[&a, &b, &c, &d, &e, &f]),
        [250, 200, 150, 300, -1, 250]
    );
    assert!(matches!(e.failure(), Some(Failure::TimedOut)));
    assert_eq!(e.elapsed, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_whole_dashboard_is_cut_at_the_three_second_deadline() {
    // A query allowed 10 s on its own is still stopped by the fan-out's 3 s.
    let (revenue, outstanding, children, invoices, payments, arrears) = reference_dashboard();
    let arrears = arrears
        .ending(Ending::Hang)
        .timeout(Duration::from_secs(10));
    let started = Instant::now();
    let (a, .., f) = reference_fan_out()
        .run(
            &tenant(),
            (revenue, outstanding, children, invoices, payments, arrears),
        )
        .await;
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(a.is_fresh());
    assert!(matches!(f.failure(), Some(Failure::DeadlineExceeded)));
    assert_eq!(f.elapsed, Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_query_timeout_overrides_the_fan_outs() {
    let short = Scripted::new("short", 500).timeout(Duration::from_millis(100));
    let long = Scripted::new("long", 2500).timeout(Duration::from_millis(2600));
    let (short, long) = reference_fan_out().run(&tenant(), (short, long)).await;
    assert!(matches!(short.failure(), Some(Failure::TimedOut)));
    assert_eq!(short.elapsed, Duration::from_millis(100));
    assert_eq!(long.value, 2500);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_query_gets_its_fallback() {
    let (revenue, outstanding, children, invoices, payments, arrears) = reference_dashboard();
    let children = children.ending(Ending::Panic);
    let (a, b, c, d, e, f) = reference_fan_out()
        .run(
            &tenant(),
            (revenue, outstanding, children, invoices, payments, arrears),
        )
        .await;
    assert_eq!(
        values(&[&a, &b, &c, &d, &e, &f]),
        [250, 200, -1, 300, 350, 250]
    );
    match c.failure() {
        Some(Failure::Panicked(message)) => assert_eq!(message, "child_count exploded"),
        other => panic!("expected a panic fallback, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn every_query_sees_the_tenant_and_its_effective_deadline() {
    let (revenue, _, _, _, _, _) = reference_dashboard();
    let own = Scripted::new("own", 10).timeout(Duration::from_secs(5));
    let started = Instant::now();
    reference_fan_out().run(&tenant(), (&revenue, &own)).await;

    let seen = revenue.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].tenant(), &tenant());
    // The fan-out's 2 s timeout is earlier than its 3 s deadline.
    assert_eq!(seen[0].deadline(), Some(started + Duration::from_secs(2)));
    // The query's own 5 s is later than the 3 s deadline.
    assert_eq!(
        own.seen.lock().unwrap()[0].deadline(),
        Some(started + Duration::from_secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn a_vec_of_one_query_type_gives_a_vec_in_input_order() {
    let widgets: Vec<Scripted> = (1..=20).rev().map(|i| Scripted::new("w", i * 10)).collect();
    let outcomes = reference_fan_out().run(&tenant(), widgets).await;
    let expected: Vec<i64> = (1..=20).rev().map(|i| i * 10).collect();
    assert_eq!(
        outcomes.iter().map(|o| o.value).collect::<Vec<_>>(),
        expected
    );
    assert!(
        reference_fan_out()
            .run(&tenant(), Vec::<Scripted>::new())
            .await
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn a_tuple_of_twelve_queries_runs() {
    let q = |ms| Scripted::new("q", ms);
    let outcomes = FanOut::new()
        .run(
            &tenant(),
            (
                q(1),
                q(2),
                q(3),
                q(4),
                q(5),
                q(6),
                q(7),
                q(8),
                q(9),
                q(10),
                q(11),
                q(12),
            ),
        )
        .await;
    assert_eq!(outcomes.0.value + outcomes.11.value, 13);
}

#[tokio::test(start_paused = true)]
async fn queries_shared_by_reference_serve_many_tenants() {
    let (revenue, outstanding, ..) = reference_dashboard();
    let fan_out = reference_fan_out();
    for id in ["t1", "t2", "t3"] {
        let tenant = TenantId::new(id).unwrap();
        let (a, b) = fan_out.run(&tenant, (&revenue, &outstanding)).await;
        assert!(a.is_fresh() && b.is_fresh());
    }
    assert_eq!(revenue.runs(), 3);
    let tenants: Vec<String> = revenue
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.tenant().to_string())
        .collect();
    assert_eq!(tenants, ["t1", "t2", "t3"]);
}
