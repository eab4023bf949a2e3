//! The futures the crate returns are `Send` whenever the inputs are, so
//! they run in axum handlers and under `tokio::spawn`. Checked at compile
//! time, as futures-rs does.

mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout::{FanOut, TenantId, join_all_settled_with_timeout, join_all_with_defaults};
use support::{Scripted, reference_dashboard};

fn assert_send<T: Send>(_: &T) {}

#[tokio::test(start_paused = true)]
async fn every_returned_future_is_send_and_spawnable() {
    let fan_out = FanOut::new()
        .timeout(Duration::from_secs(2))
        .limiter(Arc::new(tokio::sync::Semaphore::new(4)));
    let tenant = TenantId::new("t1").unwrap();
    let inputs = || (0..3).map(|i| async move { Ok::<_, std::io::Error>(i) });

    let settle = fan_out.settle(inputs());
    assert_send(&settle);
    let free = join_all_settled_with_timeout(inputs(), Duration::from_secs(1));
    assert_send(&free);
    let defaults = join_all_with_defaults(inputs().map(|f| (f, 0)));
    assert_send(&defaults);
    let tuple = fan_out.run(&tenant, reference_dashboard());
    assert_send(&tuple);
    let vec = fan_out.run(&tenant, vec![Scripted::new("a", 1)]);
    assert_send(&vec);
    drop((settle, free, defaults, tuple, vec));

    // And they really run on another task.
    let handle = tokio::spawn(async move {
        let (a, ..) = fan_out.run(&tenant, reference_dashboard()).await;
        a.value
    });
    assert_eq!(handle.await.unwrap(), 250);
}
