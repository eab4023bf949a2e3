//! [`Change`]: what a change notification says (a tenant, which of its
//! widgets changed, what happened), and how one is read from a `NOTIFY`
//! payload or any other message bus.

use serde_json::Value;

use super::{Event, EventKind, UnknownEventKind};
use crate::{InvalidTenantId, TenantId};

/// A change to one tenant's data, for [`Live::apply`](super::Live::apply).
///
/// # Examples
///
/// ```
/// use fanout::live::{Change, EventKind};
///
/// let change = Change::parse(
///     r#"{"tenant":"creche-042","widgets":["recent_payments","total_revenue"],
///         "event":"payment_received","data":{"amount_cents":5000}}"#,
/// )?;
/// assert_eq!(change.tenant.as_str(), "creche-042");
/// assert_eq!(change.widgets.as_deref(), Some(&["recent_payments".to_owned(), "total_revenue".to_owned()][..]));
/// assert_eq!(change.event.unwrap().kind, EventKind::PaymentReceived);
///
/// // A bare tenant id: all its widgets changed.
/// let change = Change::parse("creche-042")?;
/// assert!(change.widgets.is_none() && change.event.is_none());
///
/// assert!(Change::parse(r#"{"tenant":".."}"#).is_err());
/// # Ok::<(), fanout::live::InvalidChange>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The tenant whose data changed.
    pub tenant: TenantId,
    /// The widgets to refresh; `None` for all of them.
    pub widgets: Option<Vec<String>>,
    /// The domain event to relay, if any.
    pub event: Option<Event>,
}

impl Change {
    /// A change to all of `tenant`'s widgets, with no event.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{TenantId, live::Change};
    /// let change = Change::all(TenantId::new("t1")?);
    /// assert!(change.widgets.is_none());
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn all(tenant: TenantId) -> Self {
        Self {
            tenant,
            widgets: None,
            event: None,
        }
    }

    /// Reads a payload: either a bare tenant id (all widgets changed), or a
    /// JSON object with `tenant` (required), `widgets` (an array of names;
    /// absent for all), `event` (an [`EventKind`] name) and `data` (the
    /// event's details). Other fields are ignored, so a newer writer may
    /// add some.
    ///
    /// # Errors
    ///
    /// [`InvalidChange`] for anything else; nothing is applied.
    ///
    /// # Examples
    ///
    /// See [`Change`].
    pub fn parse(payload: &str) -> Result<Self, InvalidChange> {
        let payload = payload.trim();
        if !payload.starts_with('{') {
            return Ok(Self::all(TenantId::new(payload)?));
        }
        let Value::Object(mut fields) = serde_json::from_str(payload)? else {
            return Err(InvalidChange::Field("payload", "a JSON object"));
        };
        let tenant = match fields.remove("tenant") {
            Some(Value::String(tenant)) => TenantId::new(tenant)?,
            _ => return Err(InvalidChange::Field("tenant", "a string")),
        };
        let widgets = match fields.remove("widgets") {
            None | Some(Value::Null) => None,
            Some(Value::Array(names)) => Some(
                names
                    .into_iter()
                    .map(|name| match name {
                        Value::String(name) => Ok(name),
                        _ => Err(InvalidChange::Field("widgets", "an array of strings")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(InvalidChange::Field("widgets", "an array of strings")),
        };
        let event = match fields.remove("event") {
            None | Some(Value::Null) => None,
            Some(Value::String(kind)) => Some(Event::new(
                kind.parse()?,
                fields.remove("data").unwrap_or(Value::Null),
            )),
            Some(_) => return Err(InvalidChange::Field("event", "an event kind's name")),
        };
        Ok(Self {
            tenant,
            widgets,
            event,
        })
    }

    /// This change with `event` relayed too.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{TenantId, live::{Change, Event, EventKind}};
    /// let change = Change::all(TenantId::new("t1")?)
    ///     .with_event(Event::new(EventKind::ArrearsAlert, serde_json::Value::Null));
    /// assert_eq!(change.event.unwrap().kind, EventKind::ArrearsAlert);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn with_event(mut self, event: Event) -> Self {
        self.event = Some(event);
        self
    }

    /// This change limited to `widgets`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fanout::{TenantId, live::Change};
    /// let change = Change::all(TenantId::new("t1")?).widgets(["outstanding"]);
    /// assert_eq!(change.widgets.unwrap(), ["outstanding"]);
    /// # Ok::<(), fanout::InvalidTenantId>(())
    /// ```
    pub fn widgets<S: Into<String>>(mut self, widgets: impl IntoIterator<Item = S>) -> Self {
        self.widgets = Some(widgets.into_iter().map(Into::into).collect());
        self
    }
}

/// A payload that is not a [`Change`].
///
/// # Examples
///
/// ```
/// let error = fanout::live::Change::parse("{\"tenant\": 7}").unwrap_err();
/// assert_eq!(error.to_string(), "`tenant` must be a string");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidChange {
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field of the wrong type or missing.
    #[error("`{0}` must be {1}")]
    Field(&'static str, &'static str),
    /// Not a valid tenant id.
    #[error(transparent)]
    Tenant(#[from] InvalidTenantId),
    /// An event kind this crate does not know.
    #[error(transparent)]
    Event(#[from] UnknownEventKind),
}

impl From<EventKind> for Event {
    fn from(kind: EventKind) -> Self {
        Event::new(kind, Value::Null)
    }
}
