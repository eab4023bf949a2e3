//! [`QuerySet`]: the shapes of dashboards [`FanOut::run`] accepts: tuples of
//! 1 to 12 queries of any types, and `Vec`s of one query type.

use std::future::Future;
use std::pin::{Pin, pin};

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::hooks;
use crate::in_order::InOrder;
use crate::query_stream::{self, QueueLength};
use crate::query_tuple::{self, Member, Slot};
use crate::report::QueryReport;
use crate::resolve::fan_out_finished;
use crate::{DashboardQuery, FanOut, Outcome, Report, TenantId};

/// A set of [`DashboardQuery`] values that [`FanOut::run`] can run as one
/// dashboard: a tuple of 1 to 12 queries (each its own type), or a `Vec` of
/// queries of one type.
///
/// Sealed: the crate implements it for those shapes only.
///
/// # Examples
///
/// ```
/// use fanout::{DashboardQuery, FanOut, Outcome, QueryContext, QuerySet, TenantId};
///
/// struct Constant(&'static str, i64);
///
/// impl DashboardQuery for Constant {
///     type Output = i64;
///     type Error = std::convert::Infallible;
///     fn name(&self) -> &'static str { self.0 }
///     async fn run(&self, _ctx: QueryContext) -> Result<i64, Self::Error> { Ok(self.1) }
///     fn fallback(&self) -> i64 { 0 }
/// }
///
/// fn is_query_set<Q: QuerySet>(_: &Q) {}
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fanout::InvalidTenantId> {
/// is_query_set(&vec![Constant("a", 1), Constant("b", 2)]);
///
/// // A tuple gives a tuple of outcomes, each with its own value type.
/// let tenant = TenantId::new("t1")?;
/// let (a, b): (Outcome<i64>, Outcome<i64>) =
///     FanOut::new().run(&tenant, (Constant("a", 1), Constant("b", 2))).await;
/// assert_eq!(a.value + b.value, 3);
/// # Ok(()) }
/// ```
pub trait QuerySet: sealed::Sealed {
    /// What [`FanOut::run`] returns for this set: a tuple of
    /// [`Outcome`]s for a tuple, `Vec<Outcome<_>>` for a `Vec`.
    type Outcomes;

    /// Runs the set inside `span`, writing its [`Report`] to `report` when
    /// asked for one; call [`FanOut::run`] or [`FanOut::run_with_report`]
    /// instead.
    #[doc(hidden)]
    fn run_set(
        self,
        fan_out: &FanOut,
        tenant: &TenantId,
        span: Span,
        report: Option<&mut Option<Report>>,
    ) -> impl Future<Output = Self::Outcomes> + Send;
}

pub(crate) mod sealed {
    // `pub` in a private module: nameable in the public trait's bounds,
    // unreachable from outside, which is what seals `QuerySet`.
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

impl<Q: DashboardQuery> sealed::Sealed for Vec<Q> {}

impl<Q: DashboardQuery> QuerySet for Vec<Q> {
    type Outcomes = Vec<Outcome<Q::Output>>;

    async fn run_set(
        self,
        fan_out: &FanOut,
        tenant: &TenantId,
        span: Span,
        report: Option<&mut Option<Report>>,
    ) -> Self::Outcomes {
        let wanted = report.is_some();
        let started = Instant::now();
        let mut outcomes = InOrder::new(self.len());
        let mut names = InOrder::new(if wanted { self.len() } else { 0 });
        let mut stream = query_stream::stream(fan_out, tenant, &self);
        async {
            while let Some((index, name, outcome)) = stream.next().await {
                if wanted {
                    names.place(index, name);
                }
                outcomes.place(index, outcome);
            }
        }
        .instrument(span)
        .await;
        let outcomes = outcomes.finish(self.len());
        if let Some(report) = report {
            let queries = names
                .finish(self.len())
                .into_iter()
                .zip(&outcomes)
                .map(|(name, outcome)| QueryReport::new(name, outcome))
                .collect();
            *report = Some(Report::new(
                tenant,
                started.elapsed(),
                queries,
                stream.queue_length(),
            ));
        }
        outcomes
    }
}

macro_rules! tuple_query_set {
    ($($query:ident $slot:ident $ty:ident),+) => {
        impl<$($ty: DashboardQuery),+> sealed::Sealed for ($($ty,)+) {}

        impl<$($ty: DashboardQuery),+> QuerySet for ($($ty,)+) {
            type Outcomes = ($(Outcome<$ty::Output>,)+);

            async fn run_set(
                self,
                fan_out: &FanOut,
                tenant: &TenantId,
                span: Span,
                report: Option<&mut Option<Report>>,
            ) -> Self::Outcomes {
                let started = Instant::now();
                let ($($query,)+) = self;
                $(let mut $slot = pin!(Slot::new(&$query, tenant, hooks::load::<$ty>));)+
                // Only the engine's future is instrumented, and the rest runs
                // in the span without one: the queries are held inline here,
                // and a wrapper around this future would copy them.
                let (waited, queue_length) = {
                    let mut members = [$($slot.as_mut() as Pin<&mut dyn Member>),+];
                    query_tuple::run(fan_out, tenant, &mut members)
                        .instrument(span.clone())
                        .await
                };
                let _entered = span.enter();
                let longest_wait = waited.iter().copied().max().unwrap_or_default();
                let mut waited = waited.into_iter();
                let names = [$($slot.name()),+];
                let outcomes = ($($slot.as_mut().outcome(waited.next().unwrap_or_default()),)+);
                let elapsed = started.elapsed();
                fan_out_finished(elapsed, longest_wait, queue_length);
                if let Some(report) = report {
                    let ($($slot,)+) = &outcomes;
                    let mut names = names.into_iter();
                    let queries = vec![$(QueryReport::new(
                        names.next().unwrap_or_default(),
                        $slot,
                    )),+];
                    *report = Some(Report::new(tenant, elapsed, queries, queue_length));
                }
                outcomes
            }
        }
    };
}

tuple_query_set!(q1 s1 Q1);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7, q8 s8 Q8);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7, q8 s8 Q8, q9 s9 Q9);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7, q8 s8 Q8, q9 s9 Q9, q10 s10 Q10);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7, q8 s8 Q8, q9 s9 Q9, q10 s10 Q10, q11 s11 Q11);
tuple_query_set!(q1 s1 Q1, q2 s2 Q2, q3 s3 Q3, q4 s4 Q4, q5 s5 Q5, q6 s6 Q6, q7 s7 Q7, q8 s8 Q8, q9 s9 Q9, q10 s10 Q10, q11 s11 Q11, q12 s12 Q12);
