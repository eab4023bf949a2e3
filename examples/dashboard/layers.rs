//! What `--cache` puts around each widget: an optional cache (in process,
//! or shared through Redis with `--redis`), over a count of the widget's
//! database executions (so the load test can show how many queries the
//! database really saw).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fanout::cache::{CachePolicy, Cached, LoadError, QueryCache};
#[cfg(feature = "redis")]
use fanout::cache::{SharedCache, SharedCached};
use fanout::{DashboardQuery, Loaded, QueryContext, TenantId};

use crate::widgets::{Arrears, Cents, Dashboard, InvoiceStats, RecentPayments, Widget};

/// Counts how many times the wrapped query ran against the database.
pub struct Counted<Q> {
    query: Q,
    runs: AtomicUsize,
}

impl<Q> Counted<Q> {
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

impl<Q: DashboardQuery> DashboardQuery for Counted<Q> {
    type Output = Q::Output;
    type Error = Q::Error;

    fn name(&self) -> &'static str {
        self.query.name()
    }

    async fn run(&self, ctx: QueryContext) -> Result<Q::Output, Q::Error> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.query.run(ctx).await
    }

    fn fallback(&self) -> Q::Output {
        self.query.fallback()
    }

    fn timeout(&self) -> Option<Duration> {
        self.query.timeout()
    }
}

/// Where widgets' values may come from besides the database.
#[derive(Clone)]
pub enum Caching {
    InProcess(QueryCache, CachePolicy),
    #[cfg(feature = "redis")]
    Shared(SharedCache, CachePolicy),
}

/// What a cached widget's value must be: `Clone` for the in-process tier,
/// and serde for the shared one.
#[cfg(not(feature = "redis"))]
pub trait CacheValue: Clone + Sync + 'static {}
#[cfg(not(feature = "redis"))]
impl<T: Clone + Sync + 'static> CacheValue for T {}
#[cfg(feature = "redis")]
pub trait CacheValue:
    Clone + Sync + 'static + serde::Serialize + serde::de::DeserializeOwned
{
}
#[cfg(feature = "redis")]
impl<T: Clone + Sync + 'static + serde::Serialize + serde::de::DeserializeOwned> CacheValue for T {}

/// A widget served straight from the database, or through a cache.
pub enum Layer<Q> {
    Direct(Counted<Q>),
    Cached(Cached<Counted<Q>>),
    #[cfg(feature = "redis")]
    Shared(SharedCached<Counted<Q>>),
}

/// Calls `$call` on whichever query the layer holds.
macro_rules! each {
    ($layer:expr, $q:ident => $call:expr) => {
        match $layer {
            Layer::Direct($q) => $call,
            Layer::Cached($q) => $call,
            #[cfg(feature = "redis")]
            Layer::Shared($q) => $call,
        }
    };
}

impl<Q> Layer<Q> {
    fn new(query: Q, caching: Option<&Caching>) -> Self {
        let counted = Counted {
            query,
            runs: AtomicUsize::new(0),
        };
        match caching {
            None => Self::Direct(counted),
            Some(Caching::InProcess(cache, policy)) => {
                Self::Cached(Cached::new(counted, cache, *policy))
            }
            #[cfg(feature = "redis")]
            Some(Caching::Shared(cache, policy)) => {
                Self::Shared(SharedCached::new(counted, cache, *policy))
            }
        }
    }

    /// Database executions so far.
    pub fn runs(&self) -> usize {
        match self {
            Self::Direct(counted) => counted.runs(),
            Self::Cached(cached) => cached.inner().runs(),
            #[cfg(feature = "redis")]
            Self::Shared(cached) => cached.inner().runs(),
        }
    }
}

impl<Q> DashboardQuery for Layer<Q>
where
    Q: DashboardQuery + 'static,
    Q::Output: CacheValue,
{
    type Output = Q::Output;
    // What the cache layers fail with; the direct layer's errors are
    // wrapped the same way, so every layer is one type.
    type Error = LoadError;

    fn name(&self) -> &'static str {
        each!(self, q => q.name())
    }

    async fn run(&self, ctx: QueryContext) -> Result<Q::Output, LoadError> {
        match self {
            Layer::Direct(q) => q.run(ctx).await.map_err(direct),
            Layer::Cached(q) => q.run(ctx).await,
            #[cfg(feature = "redis")]
            Layer::Shared(q) => q.run(ctx).await,
        }
    }

    fn fallback(&self) -> Q::Output {
        each!(self, q => q.fallback())
    }

    fn timeout(&self) -> Option<Duration> {
        each!(self, q => q.timeout())
    }

    async fn load(&self, ctx: QueryContext) -> Result<Loaded<Q::Output>, LoadError> {
        match self {
            Layer::Direct(q) => q.load(ctx).await.map_err(direct),
            Layer::Cached(q) => q.load(ctx).await,
            #[cfg(feature = "redis")]
            Layer::Shared(q) => q.load(ctx).await,
        }
    }

    async fn stale(&self, tenant: &TenantId) -> Option<(Q::Output, Duration)> {
        each!(self, q => q.stale(tenant).await)
    }
}

fn direct<E: std::error::Error + Send + Sync + 'static>(error: E) -> LoadError {
    LoadError::Query(std::sync::Arc::new(error))
}

/// The six widgets, each in its layer.
pub type Layered = (
    Layer<Widget<Cents>>,
    Layer<Widget<Cents>>,
    Layer<Widget<i64>>,
    Layer<Widget<InvoiceStats>>,
    Layer<Widget<RecentPayments>>,
    Layer<Widget<Arrears>>,
);

pub type LayeredRefs<'a> = (
    &'a Layer<Widget<Cents>>,
    &'a Layer<Widget<Cents>>,
    &'a Layer<Widget<i64>>,
    &'a Layer<Widget<InvoiceStats>>,
    &'a Layer<Widget<RecentPayments>>,
    &'a Layer<Widget<Arrears>>,
);

/// Puts every widget of `dashboard` in a layer: through `caching` when
/// given.
pub fn layer(dashboard: Dashboard, cache: Option<&Caching>) -> Layered {
    let (a, b, c, d, e, f) = dashboard;
    (
        Layer::new(a, cache),
        Layer::new(b, cache),
        Layer::new(c, cache),
        Layer::new(d, cache),
        Layer::new(e, cache),
        Layer::new(f, cache),
    )
}

pub fn refs(d: &Layered) -> LayeredRefs<'_> {
    (&d.0, &d.1, &d.2, &d.3, &d.4, &d.5)
}

/// Database executions of each widget so far, in dashboard order.
pub fn runs(d: &Layered) -> [usize; 6] {
    [
        d.0.runs(),
        d.1.runs(),
        d.2.runs(),
        d.3.runs(),
        d.4.runs(),
        d.5.runs(),
    ]
}
