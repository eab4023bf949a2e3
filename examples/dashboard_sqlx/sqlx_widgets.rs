//! The six dashboard widgets as `DashboardQuery` impls over a sqlx pool:
//! the same SQL (`queries.sql`) and the same value types as the
//! tokio-postgres dashboard, each run through `fanout::sqlx::fetch_all`
//! under the query's deadline.

use std::time::{Duration, SystemTime};

use fanout::{DashboardQuery, QueryContext};
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueFormat, PgValueRef};
use sqlx::{Decode, PgPool, Postgres, Row, Type};

use crate::sql;
use crate::widgets::{
    Arrear, Arrears, Cents, InvoiceStats, Mode, Payment, RecentPayments, StatusCount,
};

/// One widget: a named query on the pool, decoded into `T`.
pub struct Widget<T> {
    pool: PgPool,
    name: &'static str,
    sql: String,
    decode: fn(&[PgRow]) -> Result<T, sqlx::Error>,
}

impl<T> Widget<T> {
    fn new(
        pool: &PgPool,
        name: &'static str,
        mode: Mode,
        decode: fn(&[PgRow]) -> Result<T, sqlx::Error>,
    ) -> Self {
        let query = sql::named(sql::QUERIES, name).expect("queries.sql names every widget");
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

impl<T: Send + Default> DashboardQuery for Widget<T> {
    type Output = T;
    type Error = sqlx::Error;

    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, ctx: QueryContext) -> Result<T, sqlx::Error> {
        let query = sqlx::query(&self.sql).bind(ctx.tenant().as_str());
        let rows = fanout::sqlx::fetch_all(&self.pool, &ctx, query).await?;
        (self.decode)(&rows)
    }

    fn fallback(&self) -> T {
        T::default()
    }
}

fn one_bigint(rows: &[PgRow]) -> Result<i64, sqlx::Error> {
    match rows {
        [row] => row.try_get(0),
        _ => Err(sqlx::Error::Protocol(format!(
            "{} rows, expected 1",
            rows.len()
        ))),
    }
}

pub fn decode_cents(rows: &[PgRow]) -> Result<Cents, sqlx::Error> {
    one_bigint(rows).map(Cents)
}

pub fn decode_count(rows: &[PgRow]) -> Result<i64, sqlx::Error> {
    one_bigint(rows)
}

pub fn decode_invoice_stats(rows: &[PgRow]) -> Result<InvoiceStats, sqlx::Error> {
    let row = |r: &PgRow| -> Result<StatusCount, sqlx::Error> {
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
}

pub fn decode_recent_payments(rows: &[PgRow]) -> Result<RecentPayments, sqlx::Error> {
    let row = |r: &PgRow| -> Result<Payment, sqlx::Error> {
        Ok(Payment {
            id: r.try_get(0)?,
            paid_at: r.try_get::<Timestamp, _>(1)?.0,
            amount: Cents(r.try_get(2)?),
            parent: r.try_get(3)?,
            child: r.try_get(4)?,
        })
    };
    rows.iter()
        .map(row)
        .collect::<Result<_, _>>()
        .map(RecentPayments)
}

pub fn decode_arrears(rows: &[PgRow]) -> Result<Arrears, sqlx::Error> {
    let row = |r: &PgRow| -> Result<Arrear, sqlx::Error> {
        Ok(Arrear {
            parent_id: r.try_get(0)?,
            parent: r.try_get(1)?,
            overdue: Cents(r.try_get(2)?),
            days_overdue: r.try_get(3)?,
        })
    };
    rows.iter().map(row).collect::<Result<_, _>>().map(Arrears)
}

/// A `timestamptz` as `SystemTime`. sqlx decodes timestamps only through
/// its `chrono` or `time` features; the example keeps the tree small and
/// reads the binary format itself: microseconds since 2000-01-01 UTC.
struct Timestamp(SystemTime);

/// 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, in Unix seconds.
const POSTGRES_EPOCH: Duration = Duration::from_secs(946_684_800);

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("timestamptz")
    }
}

impl Decode<'_, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("timestamptz in text format: run the widget as a prepared query".into());
        }
        let bytes: [u8; 8] = value.as_bytes()?.try_into()?;
        let micros = i64::from_be_bytes(bytes);
        let epoch = SystemTime::UNIX_EPOCH + POSTGRES_EPOCH;
        let offset = Duration::from_micros(micros.unsigned_abs());
        let at = if micros >= 0 {
            epoch.checked_add(offset)
        } else {
            epoch.checked_sub(offset)
        };
        at.map(Timestamp)
            .ok_or_else(|| format!("timestamptz out of range: {micros} µs").into())
    }
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

/// Builds the dashboard's widgets on `pool`; `mode` says how each one (by
/// name) behaves.
pub fn dashboard(pool: &PgPool, mode: impl Fn(&str) -> Mode) -> Dashboard {
    (
        Widget::new(pool, "total_revenue", mode("total_revenue"), decode_cents),
        Widget::new(pool, "outstanding", mode("outstanding"), decode_cents),
        Widget::new(pool, "child_count", mode("child_count"), decode_count),
        Widget::new(
            pool,
            "invoice_stats",
            mode("invoice_stats"),
            decode_invoice_stats,
        ),
        Widget::new(
            pool,
            "recent_payments",
            mode("recent_payments"),
            decode_recent_payments,
        ),
        Widget::new(pool, "arrears", mode("arrears"), decode_arrears),
    )
}

/// The dashboard borrowed, so one set of widgets serves every run.
pub type DashboardRefs<'a> = (
    &'a Widget<Cents>,
    &'a Widget<Cents>,
    &'a Widget<i64>,
    &'a Widget<InvoiceStats>,
    &'a Widget<RecentPayments>,
    &'a Widget<Arrears>,
);

pub fn refs(d: &Dashboard) -> DashboardRefs<'_> {
    (&d.0, &d.1, &d.2, &d.3, &d.4, &d.5)
}
