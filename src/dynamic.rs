//! Dashboards whose widgets are chosen at run time (feature `serde`): from
//! a user's saved layout, a `?widgets=` parameter, a feature flag.
//!
//! Register every widget query once in a [`WidgetRegistry`]; each request
//! [`select`](WidgetRegistry::select)s widgets by name, getting a
//! `Vec<Widget>` that [`FanOut::run`](crate::FanOut::run) runs all at once
//! and [`FanOut::run_stream`](crate::FanOut::run_stream) streams in
//! completion order. Every widget's value comes back as a
//! [`serde_json::Value`], whatever its query's output type. Unknown names are
//! an error before anything runs.
//!
//! # Examples
//!
//! ```
//! use fanout::dynamic::{WidgetRegistry, WidgetSetError};
//! use fanout::{DashboardQuery, FanOut, QueryContext, TenantId};
//! use serde_json::json;
//!
//! struct ChildCount;
//! impl DashboardQuery for ChildCount {
//!     type Output = u32;
//!     type Error = std::io::Error;
//!     fn name(&self) -> &'static str { "child_count" }
//!     async fn run(&self, _ctx: QueryContext) -> Result<u32, std::io::Error> { Ok(42) }
//!     fn fallback(&self) -> u32 { 0 }
//! }
//!
//! struct Statuses;
//! impl DashboardQuery for Statuses {
//!     type Output = Vec<(String, u32)>;
//!     type Error = std::io::Error;
//!     fn name(&self) -> &'static str { "invoice_stats" }
//!     async fn run(&self, _ctx: QueryContext) -> Result<Self::Output, std::io::Error> {
//!         Ok(vec![("paid".into(), 7)])
//!     }
//!     fn fallback(&self) -> Self::Output { Vec::new() }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = WidgetRegistry::new();
//! registry.register(ChildCount)?;
//! registry.register(Statuses)?;
//!
//! let layout = "invoice_stats,child_count";
//! let widgets = registry.select(layout.split(','))?;
//! let outcomes = FanOut::new().run(&TenantId::new("t1")?, widgets).await;
//! assert_eq!(outcomes[0].value, json!([["paid", 7]]));
//! assert_eq!(outcomes[1].value, json!(42));
//!
//! assert!(matches!(registry.select(["arrears"]), Err(WidgetSetError::Unknown { .. })));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::{BoxError, DashboardQuery, Loaded, QueryContext, TenantId};

/// The widget queries a service offers, by name.
///
/// # Examples
///
/// See the [module](self) docs.
#[derive(Clone, Default)]
pub struct WidgetRegistry {
    widgets: BTreeMap<&'static str, Widget>,
}

impl WidgetRegistry {
    /// An empty registry.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = fanout::dynamic::WidgetRegistry::new();
    /// assert_eq!(registry.names().count(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `query` under its [`name`](DashboardQuery::name).
    ///
    /// # Errors
    ///
    /// [`WidgetSetError::Duplicate`] when a widget of that name is already
    /// registered.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn register<Q>(&mut self, query: Q) -> Result<&mut Self, WidgetSetError>
    where
        Q: DashboardQuery + 'static,
        Q::Output: Serialize,
    {
        let name = query.name();
        if self.widgets.contains_key(name) {
            return Err(WidgetSetError::Duplicate {
                name: name.to_owned(),
            });
        }
        self.widgets.insert(name, Widget(Arc::new(query)));
        Ok(self)
    }

    /// The registered names, in alphabetical order.
    ///
    /// # Examples
    ///
    /// See [`new`](Self::new).
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.widgets.keys().copied()
    }

    /// The widgets named in `names`, in that order, ready for
    /// [`FanOut::run`](crate::FanOut::run).
    ///
    /// # Errors
    ///
    /// [`WidgetSetError::Unknown`] for a name not registered,
    /// [`WidgetSetError::Duplicate`] for a name listed twice and
    /// [`WidgetSetError::Empty`] for no names; nothing has run.
    ///
    /// # Examples
    ///
    /// See the [module](self) docs.
    pub fn select<S: AsRef<str>>(
        &self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Vec<Widget>, WidgetSetError> {
        let mut selected: Vec<Widget> = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            let widget = self
                .widgets
                .get(name)
                .ok_or_else(|| WidgetSetError::Unknown {
                    name: name.to_owned(),
                    known: self.names().collect(),
                })?;
            if selected.iter().any(|w| w.0.name() == widget.0.name()) {
                return Err(WidgetSetError::Duplicate {
                    name: name.to_owned(),
                });
            }
            selected.push(widget.clone());
        }
        if selected.is_empty() {
            return Err(WidgetSetError::Empty);
        }
        Ok(selected)
    }

    /// Every registered widget, in alphabetical order.
    ///
    /// # Examples
    ///
    /// ```
    /// let registry = fanout::dynamic::WidgetRegistry::new();
    /// assert!(registry.all().is_empty());
    /// ```
    pub fn all(&self) -> Vec<Widget> {
        self.widgets.values().cloned().collect()
    }
}

impl fmt::Debug for WidgetRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.widgets.keys()).finish()
    }
}

/// Why a set of widgets could not be built; nothing ran.
///
/// # Examples
///
/// ```
/// use fanout::dynamic::{WidgetRegistry, WidgetSetError};
///
/// let error = WidgetRegistry::new().select(["revenue"]).unwrap_err();
/// assert_eq!(error.to_string(), "unknown widget \"revenue\"; known widgets: (none)");
/// assert_eq!(WidgetRegistry::new().select(Vec::<&str>::new()).unwrap_err(), WidgetSetError::Empty);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WidgetSetError {
    /// No widget has this name.
    #[error("unknown widget {name:?}; known widgets: {}", known_list(.known))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: Vec<&'static str>,
    },
    /// The name was registered, or selected, twice.
    #[error("widget {name:?} appears twice")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
    /// No widget was selected.
    #[error("no widgets selected")]
    Empty,
}

fn known_list(known: &[&'static str]) -> String {
    if known.is_empty() {
        "(none)".to_owned()
    } else {
        known.join(", ")
    }
}

/// A registered widget query with its value type erased to JSON: a
/// [`DashboardQuery`] whose output is a [`serde_json::Value`].
///
/// Cloning is cheap (reference counted).
///
/// # Examples
///
/// See the [module](self) docs.
#[derive(Clone)]
pub struct Widget(Arc<dyn ErasedQuery>);

impl fmt::Debug for Widget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Widget").field(&self.0.name()).finish()
    }
}

/// A widget's failure: its query's error, or its value failing to
/// serialize.
///
/// # Examples
///
/// ```
/// let error = fanout::dynamic::WidgetError::from(Box::<dyn std::error::Error + Send + Sync>::from("timeout"));
/// assert_eq!(error.to_string(), "timeout");
/// ```
#[derive(Debug)]
pub struct WidgetError(BoxError);

impl WidgetError {
    /// The query's own error, unwrapped.
    #[cfg(feature = "cache")]
    pub(crate) fn inner(&self) -> &(dyn std::error::Error + 'static) {
        &*self.0
    }
}

impl From<BoxError> for WidgetError {
    fn from(error: BoxError) -> Self {
        Self(error)
    }
}

impl fmt::Display for WidgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for WidgetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl DashboardQuery for Widget {
    type Output = Value;
    type Error = WidgetError;

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn run(&self, ctx: QueryContext) -> impl Future<Output = Result<Value, WidgetError>> + Send {
        let load = self.0.load(ctx);
        async move { Ok(load.await.map_err(WidgetError)?.into_value()) }
    }

    fn load(
        &self,
        ctx: QueryContext,
    ) -> impl Future<Output = Result<Loaded<Value>, WidgetError>> + Send {
        let load = self.0.load(ctx);
        async move { load.await.map_err(WidgetError) }
    }

    fn stale(&self, tenant: &TenantId) -> impl Future<Output = Option<(Value, Duration)>> + Send {
        // Owned, so the future borrows neither `self` nor `tenant`.
        let (query, tenant) = (Arc::clone(&self.0), tenant.clone());
        async move { query.stale(&tenant).await }
    }

    fn fallback(&self) -> Value {
        self.0.fallback()
    }

    fn timeout(&self) -> Option<Duration> {
        self.0.timeout()
    }
}

type BoxedLoad<'a> = Pin<Box<dyn Future<Output = Result<Loaded<Value>, BoxError>> + Send + 'a>>;
type BoxedStale<'a> = Pin<Box<dyn Future<Output = Option<(Value, Duration)>> + Send + 'a>>;

/// [`DashboardQuery`] made object-safe, with its output as JSON.
trait ErasedQuery: Send + Sync {
    fn name(&self) -> &'static str;
    fn timeout(&self) -> Option<Duration>;
    fn load(&self, ctx: QueryContext) -> BoxedLoad<'_>;
    fn stale<'a>(&'a self, tenant: &'a TenantId) -> BoxedStale<'a>;
    fn fallback(&self) -> Value;
}

impl<Q> ErasedQuery for Q
where
    Q: DashboardQuery,
    Q::Output: Serialize,
{
    fn name(&self) -> &'static str {
        DashboardQuery::name(self)
    }

    fn timeout(&self) -> Option<Duration> {
        DashboardQuery::timeout(self)
    }

    fn load(&self, ctx: QueryContext) -> BoxedLoad<'_> {
        Box::pin(async move {
            Ok(DashboardQuery::load(self, ctx)
                .await?
                .try_map(serde_json::to_value)?)
        })
    }

    fn stale<'a>(&'a self, tenant: &'a TenantId) -> BoxedStale<'a> {
        Box::pin(async move {
            let (value, age) = DashboardQuery::stale(self, tenant).await?;
            Some((serde_json::to_value(value).ok()?, age))
        })
    }

    fn fallback(&self) -> Value {
        // A fallback that cannot be serialized shows as null rather than
        // failing the widget twice.
        serde_json::to_value(DashboardQuery::fallback(self)).unwrap_or(Value::Null)
    }
}
