//! A widget that counts its runs: the database queries live dashboards
//! cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fanout::{DashboardQuery, QueryContext};

#[derive(Clone, Default)]
pub struct Runs(Arc<AtomicUsize>);

impl Runs {
    pub fn total(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Counted<Q> {
    query: Q,
    runs: Runs,
}

impl<Q> Counted<Q> {
    pub fn new(query: Q, runs: &Runs) -> Self {
        Self {
            query,
            runs: runs.clone(),
        }
    }
}

impl<Q: DashboardQuery> DashboardQuery for Counted<Q> {
    type Output = Q::Output;
    type Error = Q::Error;

    fn name(&self) -> &'static str {
        self.query.name()
    }

    fn run(&self, ctx: QueryContext) -> impl Future<Output = Result<Q::Output, Q::Error>> + Send {
        self.runs.0.fetch_add(1, Ordering::SeqCst);
        self.query.run(ctx)
    }

    fn fallback(&self) -> Q::Output {
        self.query.fallback()
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        self.query.timeout()
    }
}
