-- Materialized views for the dashboard's history, run after seed.sql in the
-- same `-- step: NAME` format (one statement per step, in order).
--
-- Two views hold per-tenant, per-month aggregates of every month:
--   monthly_revenue        payments by month of paid_at
--   monthly_invoice_stats  invoices by month of issued_at and status
-- each with the unique index REFRESH MATERIALIZED VIEW CONCURRENTLY needs.
-- Months are date_trunc('month', ...) in the TimeZone of the session that
-- refreshes; every bucket stores its own [month_start, month_end) as
-- timestamptz, so readers compare instants and never re-derive a month.
-- The refresh, the writers (whose trigger asks "before this month?") and
-- the readers (whose widgets ask "this month") must share one TimeZone
-- setting, as queries.sql and seed.sql already assume: the example never
-- changes it; a deployment pins it per database (ALTER DATABASE ... SET
-- timezone). With zones hours apart, "this month" and a bucket disagree
-- for those hours around a month's end.
--
-- The watermark. A view row is only as good as the data it was refreshed
-- from, so the hybrid queries (hybrid.sql) do not trust "months before this
-- month": they trust a per-tenant instant, views_watermark, and take view
-- rows only for buckets that END at or before it; everything from the end
-- of the last bucket taken onward is computed live, in the same statement.
--   * refresh_dashboard_views() sets every tenant's watermark to one hour
--     before the refresh: a month counts as closed one hour after it ends,
--     so a write transaction that started before a month boundary and
--     commits after the refresh still lands in a month read live (unless it
--     stayed open for more than an hour).
--   * Writes into the past (a backdated payment, an old invoice paid or
--     cancelled, a deletion) fire a trigger that lowers the tenant's
--     watermark to the written row's timestamp: that month and every later
--     one are read live until the next refresh. The hybrid result therefore
--     equals the live one after any committed write, at the price of a row
--     lock on the tenant's watermark for writes dated before the current
--     month (writes into the current month never touch it).
--   * The refresh locks every watermark row BEFORE it refreshes the views,
--     all in one transaction. A backdated write either committed before the
--     refresh took its locks (so the refresh sees it) or waits for the
--     refresh to commit and then lowers the new watermark.
--     (A transaction writing into the past for two tenants can deadlock
--     with a refresh; PostgreSQL then aborts one of them, to be retried.)

-- step: drop-watermark
DROP TABLE IF EXISTS views_watermark CASCADE;

-- step: monthly-revenue
CREATE MATERIALIZED VIEW monthly_revenue AS
SELECT tenant_id,
       date_trunc('month', paid_at) AS month_start,
       date_trunc('month', paid_at) + interval '1 month' AS month_end,
       count(*) AS payment_count,
       sum(amount_cents)::bigint AS revenue_cents
FROM payments
GROUP BY tenant_id, date_trunc('month', paid_at);

-- step: monthly-revenue-key
CREATE UNIQUE INDEX monthly_revenue_key ON monthly_revenue (tenant_id, month_start);

-- step: monthly-invoice-stats
-- balance_cents is kept too: outstanding is the balance of sent and overdue
-- invoices, so the same view serves it.
CREATE MATERIALIZED VIEW monthly_invoice_stats AS
SELECT tenant_id,
       date_trunc('month', issued_at) AS month_start,
       date_trunc('month', issued_at) + interval '1 month' AS month_end,
       status,
       count(*) AS invoice_count,
       sum(amount_cents)::bigint AS amount_cents,
       sum(balance_cents)::bigint AS balance_cents
FROM invoices
GROUP BY tenant_id, date_trunc('month', issued_at), status;

-- step: monthly-invoice-stats-key
CREATE UNIQUE INDEX monthly_invoice_stats_key
    ON monthly_invoice_stats (tenant_id, month_start, status);

-- step: invoices-by-issue-date
-- The live part of the hybrid invoice_stats and outstanding: a tenant's
-- invoices from the watermark on, index-only.
CREATE INDEX invoices_tenant_issued_at
    ON invoices (tenant_id, issued_at) INCLUDE (status, amount_cents, balance_cents);

-- step: watermark
-- One row per tenant; a tenant without a row is read live entirely.
CREATE UNLOGGED TABLE views_watermark (
    tenant_id                text COLLATE "C" PRIMARY KEY,
    revenue_complete_before  timestamptz NOT NULL,
    invoices_complete_before timestamptz NOT NULL
);

-- step: reopen-function
-- Lowers one tenant's watermark (which = 'revenue' or 'invoices') to `at`,
-- creating the row (as "nothing is complete") if the tenant has none, so
-- that the row lock is always taken.
CREATE OR REPLACE FUNCTION views_reopen(tenant text, which text, at timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO views_watermark AS w (tenant_id, revenue_complete_before, invoices_complete_before)
    VALUES (tenant, '-infinity', '-infinity')
    ON CONFLICT (tenant_id) DO UPDATE
    SET revenue_complete_before = CASE WHEN which = 'revenue'
            THEN least(w.revenue_complete_before, at) ELSE w.revenue_complete_before END,
        invoices_complete_before = CASE WHEN which = 'invoices'
            THEN least(w.invoices_complete_before, at) ELSE w.invoices_complete_before END
$$;

-- step: payments-trigger-function
-- A payment written, changed or deleted with a date before the current
-- month reopens the revenue months from that date.
CREATE OR REPLACE FUNCTION payments_reopen_months() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.paid_at < date_trunc('month', now()) THEN
        PERFORM views_reopen(OLD.tenant_id, 'revenue', OLD.paid_at);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.paid_at < date_trunc('month', now()) THEN
        PERFORM views_reopen(NEW.tenant_id, 'revenue', NEW.paid_at);
    END IF;
    RETURN NULL;
END
$$;

-- step: payments-trigger
CREATE TRIGGER payments_reopen_months
    AFTER INSERT OR UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_reopen_months();

-- step: invoices-trigger-function
-- The same for invoices, by issue date: paying, cancelling or correcting an
-- invoice of a closed month changes that month's statistics.
CREATE OR REPLACE FUNCTION invoices_reopen_months() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.issued_at < date_trunc('month', now()) THEN
        PERFORM views_reopen(OLD.tenant_id, 'invoices', OLD.issued_at);
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.issued_at < date_trunc('month', now()) THEN
        PERFORM views_reopen(NEW.tenant_id, 'invoices', NEW.issued_at);
    END IF;
    RETURN NULL;
END
$$;

-- step: invoices-trigger
CREATE TRIGGER invoices_reopen_months
    AFTER INSERT OR UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_reopen_months();

-- step: refresh-function
-- The refresh, as one statement (one transaction): lock and raise every
-- tenant's watermark first, then refresh both views concurrently (readers
-- keep reading the old contents meanwhile). Returns the new watermark.
CREATE OR REPLACE FUNCTION refresh_dashboard_views() RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    complete_before timestamptz := now() - interval '1 hour';
BEGIN
    INSERT INTO views_watermark (tenant_id, revenue_complete_before, invoices_complete_before)
    SELECT id, complete_before, complete_before FROM tenants ORDER BY id
    ON CONFLICT (tenant_id) DO UPDATE
    SET revenue_complete_before = EXCLUDED.revenue_complete_before,
        invoices_complete_before = EXCLUDED.invoices_complete_before;
    REFRESH MATERIALIZED VIEW CONCURRENTLY monthly_revenue;
    REFRESH MATERIALIZED VIEW CONCURRENTLY monthly_invoice_stats;
    RETURN complete_before;
END
$$;

-- step: first-refresh
SELECT refresh_dashboard_views();

-- step: analyze-views
VACUUM (ANALYZE) monthly_revenue, monthly_invoice_stats, views_watermark;
