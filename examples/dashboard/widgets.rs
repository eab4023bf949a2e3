//! The six dashboard widgets as `DashboardQuery` impls over a deadpool
//! pool. Every one filters by the tenant of its `QueryContext` and runs
//! under the query's deadline on the server too (`fanout::postgres`).

use std::fmt;
use std::time::SystemTime;

use deadpool_postgres::Pool;
use fanout::{DashboardQuery, QueryContext};
use tokio_postgres::Row;

use crate::sql;

/// The widgets, in dashboard order.
pub const NAMES: [&str; 6] = [
    "total_revenue",
    "outstanding",
    "child_count",
    "invoice_stats",
    "recent_payments",
    "arrears",
];

/// How a widget's query behaves: as written, or degraded on purpose to
/// show what a dashboard does when one query goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Sleeps 30 s on the server before answering: cut by its timeout.
    Slow,
    /// Reads a table that does not exist: fails.
    Broken,
}

/// Which SQL the widgets run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queries {
    /// queries.sql: every widget computed from the tables (`--no-views`).
    Live,
    /// hybrid.sql for the widgets the materialized views serve (closed
    /// months from the views, the rest live, in one statement); queries.sql
    /// for the others. Same values as `Live`.
    #[allow(dead_code)]
    // the example and tests/postgres use it; the other binaries sharing this file do not
    Hybrid,
}

impl Queries {
    /// The SQL of widget `name`.
    pub fn sql(self, name: &str) -> &'static str {
        let hybrid = match self {
            Queries::Live => None,
            Queries::Hybrid => sql::named(sql::HYBRID, name),
        };
        hybrid
            .or_else(|| sql::named(sql::QUERIES, name))
            .expect("queries.sql names every widget")
    }
}

/// One widget: a named query on the pool, decoded into `T`.
pub struct Widget<T> {
    pool: Pool,
    name: &'static str,
    sql: String,
    decode: fn(&[Row]) -> Result<T, String>,
}

impl<T> Widget<T> {
    fn new(
        pool: &Pool,
        name: &'static str,
        queries: Queries,
        mode: Mode,
        decode: fn(&[Row]) -> Result<T, String>,
    ) -> Self {
        let query = queries.sql(name);
        let sql = match mode {
            Mode::Normal => query.to_owned(),
            Mode::Slow => format!("SELECT q.* FROM ({query}) AS q CROSS JOIN pg_sleep(30)"),
            Mode::Broken => format!("SELECT * FROM no_such_table_{name} WHERE tenant_id = $1"),
        };
        Self {
            pool: pool.clone(),
            name,
            sql,
            decode,
        }
    }
}

/// Why a widget's query failed.
#[derive(Debug, thiserror::Error)]
pub enum WidgetError {
    #[error("no connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("unexpected rows: {0}")]
    Decode(String),
}

/// The server's own message when there is one (tokio-postgres's Display says
/// only "db error").
fn db_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

impl<T: Send + Default> DashboardQuery for Widget<T> {
    type Output = T;
    type Error = WidgetError;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<T, WidgetError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&self.sql).await?;
        let rows =
            fanout::postgres::query(&client, &ctx, &statement, &[&ctx.tenant().as_str()]).await?;
        (self.decode)(&rows).map_err(WidgetError::Decode)
    }

    fn fallback(&self) -> T {
        T::default()
    }
}

/// Integer cents of South African rand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cents(pub i64);

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let (rand, cents) = (self.0.unsigned_abs() / 100, self.0.unsigned_abs() % 100);
        let digits = rand.to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(' ');
            }
            grouped.push(digit);
        }
        write!(f, "{sign}R {grouped}.{cents:02}")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
    pub amount: Cents,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceStats(pub Vec<StatusCount>);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub id: i64,
    #[serde(
        rename = "paid_at_unix_ms",
        serialize_with = "unix_millis",
        deserialize_with = "from_unix_millis"
    )]
    pub paid_at: SystemTime,
    pub amount: Cents,
    pub parent: String,
    pub child: String,
}

/// A timestamp as milliseconds since the Unix epoch: a plain number any
/// client can read, without a date library here.
fn unix_millis<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    serializer.serialize_u128(millis)
}

fn from_unix_millis<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SystemTime, D::Error> {
    let millis = <u64 as serde::Deserialize>::deserialize(deserializer)?;
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecentPayments(pub Vec<Payment>);

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arrear {
    pub parent_id: i64,
    pub parent: String,
    pub overdue: Cents,
    pub days_overdue: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arrears(pub Vec<Arrear>);

fn one_bigint(rows: &[Row]) -> Result<i64, String> {
    match rows {
        [row] => row.try_get(0).map_err(|e| e.to_string()),
        _ => Err(format!("{} rows, expected 1", rows.len())),
    }
}

pub fn decode_cents(rows: &[Row]) -> Result<Cents, String> {
    one_bigint(rows).map(Cents)
}

pub fn decode_count(rows: &[Row]) -> Result<i64, String> {
    one_bigint(rows)
}

pub fn decode_invoice_stats(rows: &[Row]) -> Result<InvoiceStats, String> {
    let row = |r: &Row| -> Result<StatusCount, tokio_postgres::Error> {
        Ok(StatusCount {
            status: r.try_get(0)?,
            count: r.try_get(1)?,
            amount: Cents(r.try_get(2)?),
        })
    };
    rows.iter()
        .map(row)
        .collect::<Result<_, _>>()
        .map(InvoiceStats)
        .map_err(|e| e.to_string())
}

pub fn decode_recent_payments(rows: &[Row]) -> Result<RecentPayments, String> {
    let row = |r: &Row| -> Result<Payment, tokio_postgres::Error> {
        Ok(Payment {
            id: r.try_get(0)?,
            paid_at: r.try_get(1)?,
            amount: Cents(r.try_get(2)?),
            parent: r.try_get(3)?,
            child: r.try_get(4)?,
        })
    };
    rows.iter()
        .map(row)
        .collect::<Result<_, _>>()
        .map(RecentPayments)
        .map_err(|e| e.to_string())
}

pub fn decode_arrears(rows: &[Row]) -> Result<Arrears, String> {
    let row = |r: &Row| -> Result<Arrear, tokio_postgres::Error> {
        Ok(Arrear {
            parent_id: r.try_get(0)?,
            parent: r.try_get(1)?,
            overdue: Cents(r.try_get(2)?),
            days_overdue: r.try_get(3)?,
        })
    };
    rows.iter()
        .map(row)
        .collect::<Result<_, _>>()
        .map(Arrears)
        .map_err(|e| e.to_string())
}

/// The dashboard: all six widgets, as a tuple `FanOut::run` accepts.
pub type Dashboard = (
    Widget<Cents>,
    Widget<Cents>,
    Widget<i64>,
    Widget<InvoiceStats>,
    Widget<RecentPayments>,
    Widget<Arrears>,
);

/// Builds the dashboard's widgets on `pool` with the live-only queries;
/// `mode` says how each one (by name) behaves.
#[allow(dead_code)] // the tests and the other examples use it; the dashboard example picks its queries
pub fn dashboard(pool: &Pool, mode: impl Fn(&str) -> Mode) -> Dashboard {
    dashboard_with(pool, Queries::Live, mode)
}

/// Builds the dashboard's widgets on `pool` running `queries`; `mode` says
/// how each one (by name) behaves.
pub fn dashboard_with(pool: &Pool, queries: Queries, mode: impl Fn(&str) -> Mode) -> Dashboard {
    let q = queries;
    (
        Widget::new(
            pool,
            "total_revenue",
            q,
            mode("total_revenue"),
            decode_cents,
        ),
        Widget::new(pool, "outstanding", q, mode("outstanding"), decode_cents),
        Widget::new(pool, "child_count", q, mode("child_count"), decode_count),
        Widget::new(
            pool,
            "invoice_stats",
            q,
            mode("invoice_stats"),
            decode_invoice_stats,
        ),
        Widget::new(
            pool,
            "recent_payments",
            q,
            mode("recent_payments"),
            decode_recent_payments,
        ),
        Widget::new(pool, "arrears", q, mode("arrears"), decode_arrears),
    )
}

impl fmt::Display for InvoiceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|s| format!("{} {}", s.status, s.count))
            .collect();
        if parts.is_empty() {
            return f.write_str("no invoices");
        }
        f.write_str(&parts.join(", "))
    }
}

impl fmt::Display for RecentPayments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.first() {
            None => f.write_str("no payments"),
            Some(latest) => write!(
                f,
                "{} payments; latest {} from {} for {}",
                self.0.len(),
                latest.amount,
                latest.parent,
                latest.child
            ),
        }
    }
}

impl fmt::Display for Arrears {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.first() {
            None => f.write_str("nobody in arrears"),
            Some(top) => write!(
                f,
                "{} parents; most {} by {} ({} days)",
                self.0.len(),
                top.overdue,
                top.parent,
                top.days_overdue
            ),
        }
    }
}

/// The dashboard borrowed, so one set of widgets serves every run.
#[allow(dead_code)] // the tests use it; the example borrows through `layers`
pub type DashboardRefs<'a> = (
    &'a Widget<Cents>,
    &'a Widget<Cents>,
    &'a Widget<i64>,
    &'a Widget<InvoiceStats>,
    &'a Widget<RecentPayments>,
    &'a Widget<Arrears>,
);

#[allow(dead_code)] // the tests use it; the example borrows through `layers`
pub fn refs(d: &Dashboard) -> DashboardRefs<'_> {
    (&d.0, &d.1, &d.2, &d.3, &d.4, &d.5)
}
