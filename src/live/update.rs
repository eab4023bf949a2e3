//! What a subscriber receives: [`Update`]s of [`WidgetValue`]s and domain
//! [`Event`]s.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::Version;
use crate::{Outcome, Source};

/// One item of a [`Subscription`](super::Subscription).
///
/// As JSON (`serde_json::to_string(&update)`), an object with a `type`
/// (`snapshot`, `widgets`, or the event's kind such as `payment_received`)
/// and a `version`, then `widgets` or the event's `data`:
///
/// ```json
/// {"type":"widgets","version":"1f2e3d4c.5e6f7a8b.42","widgets":[{"name":"outstanding","value":1200,"source":"fresh","elapsed_ms":4.1}]}
/// {"type":"payment_received","version":"1f2e3d4c.5e6f7a8b.43","data":{"amount_cents":5000}}
/// ```
///
/// # Examples
///
/// See the [module](super) docs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Update {
    /// Every widget of the subscription, in its order: the first item, and
    /// the first after a resume that could not be served from what is
    /// known.
    Snapshot {
        /// The state's version.
        version: Version,
        /// Every subscribed widget's current value.
        widgets: Vec<Arc<WidgetValue>>,
    },
    /// The widgets whose value changed since the subscriber's previous
    /// item, each at its latest value (changes it was too slow to read are
    /// merged, not queued).
    Widgets {
        /// The state's version after these changes.
        version: Version,
        /// The changed widgets, in the subscription's order.
        widgets: Vec<Arc<WidgetValue>>,
    },
    /// A domain event published for the tenant.
    Event {
        /// The event's version.
        version: Version,
        /// The event.
        event: Arc<Event>,
    },
}

impl Update {
    /// The version to [resume](super::Subscription::resume_from) from
    /// after this item.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn version(&self) -> Version {
        match self {
            Self::Snapshot { version, .. }
            | Self::Widgets { version, .. }
            | Self::Event { version, .. } => *version,
        }
    }

    /// The `type` of its JSON form: `snapshot`, `widgets` or the event's
    /// [kind](EventKind::as_str).
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Snapshot { .. } => "snapshot",
            Self::Widgets { .. } => "widgets",
            Self::Event { event, .. } => event.kind.as_str(),
        }
    }

    /// The widget values it carries: none for an event.
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn widgets(&self) -> &[Arc<WidgetValue>] {
        match self {
            Self::Snapshot { widgets, .. } | Self::Widgets { widgets, .. } => widgets,
            Self::Event { .. } => &[],
        }
    }
}

impl Serialize for Update {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("type", self.kind())?;
        map.serialize_entry("version", &self.version())?;
        match self {
            Self::Snapshot { widgets, .. } | Self::Widgets { widgets, .. } => {
                map.serialize_entry("widgets", widgets)?;
            }
            Self::Event { event, .. } => map.serialize_entry("data", &event.data)?,
        }
        map.end()
    }
}

/// A widget's value and where it came from, as pushed to subscribers.
///
/// Only labels leave the process: a failure's error text (which may name
/// tables or hosts) is in the logs, not here.
///
/// # Examples
///
/// See the [module](super) docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WidgetValue {
    /// The widget's name.
    pub name: &'static str,
    /// Its value.
    pub value: Value,
    /// `fresh`, `cached`, `refreshing`, `stale` or `fallback`.
    pub source: &'static str,
    /// For `stale` and `fallback`, why ([`Failure::label`](crate::Failure::label):
    /// `error`, `timed_out`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    /// For `cached`, `refreshing` and `stale`, the value's age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// How long the query took.
    pub elapsed_ms: f64,
}

impl WidgetValue {
    pub(super) fn new(name: &'static str, outcome: Outcome<Value>) -> Self {
        let (source, cause, age) = match &outcome.source {
            Source::Fresh => ("fresh", None, None),
            Source::Cached { age } => ("cached", None, Some(*age)),
            Source::Refreshing { age } => ("refreshing", None, Some(*age)),
            Source::Stale { age, cause } => ("stale", Some(cause.label()), Some(*age)),
            Source::Fallback(failure) => ("fallback", Some(failure.label()), None),
        };
        Self {
            name,
            value: outcome.value,
            source,
            cause,
            age_ms: age.map(|age| age.as_millis() as u64),
            elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        }
    }

    /// The last good value, kept when a refresh failed: `stale`, `age` old,
    /// because of `cause`.
    pub(super) fn kept(&self, age: Duration, cause: &'static str, elapsed_ms: f64) -> Self {
        Self {
            source: "stale",
            cause: Some(cause),
            age_ms: Some(age.as_millis() as u64),
            elapsed_ms,
            ..self.clone()
        }
    }

    /// Whether the widget failed (`stale` or `fallback`).
    ///
    /// # Examples
    ///
    /// See the [module](super) docs.
    pub fn is_degraded(&self) -> bool {
        self.cause.is_some()
    }

    /// Whether `other` would show anything different: value, source or
    /// cause (not the timings, which differ every time).
    pub(super) fn shows_same(&self, other: &Self) -> bool {
        self.value == other.value && self.source == other.source && self.cause == other.cause
    }
}

/// A domain event relayed to a tenant's subscribers: its kind and a JSON
/// payload of the application's choosing.
///
/// # Examples
///
/// ```
/// use fanout::live::{Event, EventKind};
/// use serde_json::json;
///
/// let event = Event::new(EventKind::PaymentReceived, json!({"amount_cents": 5000}));
/// assert_eq!(event.kind.as_str(), "payment_received");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Its details (`null` for none).
    pub data: Value,
}

impl Event {
    /// An event of `kind` with `data`.
    ///
    /// # Examples
    ///
    /// See [`Event`].
    pub fn new(kind: EventKind, data: Value) -> Self {
        Self { kind, data }
    }
}

/// The kinds of domain event a live dashboard relays.
///
/// # Examples
///
/// ```
/// use fanout::live::EventKind;
///
/// let kind: EventKind = "arrears_alert".parse()?;
/// assert_eq!(kind, EventKind::ArrearsAlert);
/// assert!("payment_refunded".parse::<EventKind>().is_err());
/// # Ok::<(), fanout::live::UnknownEventKind>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `payment_received`: a payment was received (allocated to an
    /// invoice).
    PaymentReceived,
    /// `invoice_status_changed`: an invoice moved to another status.
    InvoiceStatusChanged,
    /// `arrears_alert`: an account crossed the arrears threshold.
    ArrearsAlert,
    /// `metrics_updated`: the dashboard was refreshed on its interval
    /// ([`Builder::refresh_every`](super::Builder::refresh_every)).
    MetricsUpdated,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [
        Self::PaymentReceived,
        Self::InvoiceStatusChanged,
        Self::ArrearsAlert,
        Self::MetricsUpdated,
    ];

    /// Its name: `payment_received`, `invoice_status_changed`,
    /// `arrears_alert` or `metrics_updated`.
    ///
    /// # Examples
    ///
    /// See [`EventKind`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentReceived => "payment_received",
            Self::InvoiceStatusChanged => "invoice_status_changed",
            Self::ArrearsAlert => "arrears_alert",
            Self::MetricsUpdated => "metrics_updated",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, UnknownEventKind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.chars().take(64).collect()))
    }
}

/// A name that is not an [`EventKind`].
///
/// # Examples
///
/// ```
/// let error = "x".parse::<fanout::live::EventKind>().unwrap_err();
/// assert_eq!(error.to_string(), "unknown event kind `x` (known: payment_received, invoice_status_changed, arrears_alert, metrics_updated)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event kind `{0}` (known: payment_received, invoice_status_changed, arrears_alert, metrics_updated)"
)]
pub struct UnknownEventKind(String);
