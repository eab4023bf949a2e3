-- Hybrid forms of the widgets the materialized views (views.sql) can serve:
-- same `-- name:` headers, $1, columns, types and row order as queries.sql,
-- and the same values; queries.sql stays the live-only baseline
-- (`--no-views`).
--
-- Each one, in one statement (one snapshot):
--   1. split: the end of the last view bucket the tenant's watermark vouches
--      for (the latest month_end <= views_watermark), or -infinity when the
--      tenant has no watermark or no such bucket;
--   2. view rows of the buckets ending at or before split;
--   3. live rows from split onward.
-- Buckets and split are instants (timestamptz), so the two parts neither
-- overlap nor leave a gap whatever the reader's TimeZone. See views.sql for
-- why the watermark, not the calendar, decides what is closed.
--
-- The other three widgets (child_count, recent_payments, arrears) are not
-- monthly aggregates and stay live.

-- name: total_revenue
-- This month's payments. The range starts at this month, which no bucket
-- vouched for can cover (a bucket ends before the watermark, the watermark
-- is before now), so the view part is empty by construction and the widget
-- costs what the live one does plus one probe of the view: it is written
-- in the hybrid form so that a wider range (this quarter, this year) would
-- read its closed months from the view unchanged.
WITH split AS (
    SELECT coalesce(max(v.month_end), '-infinity') AS at
    FROM monthly_revenue AS v
    WHERE v.tenant_id = $1
      AND v.month_end <= (SELECT w.revenue_complete_before FROM views_watermark AS w
                          WHERE w.tenant_id = $1)
)
SELECT (coalesce((SELECT sum(v.revenue_cents)
                  FROM monthly_revenue AS v, split
                  WHERE v.tenant_id = $1
                    AND v.month_end <= split.at
                    AND v.month_start >= date_trunc('month', now())), 0)
      + coalesce((SELECT sum(p.amount_cents)
                  FROM payments AS p, split
                  WHERE p.tenant_id = $1
                    AND p.paid_at >= greatest(split.at, date_trunc('month', now()))
                    AND p.paid_at < date_trunc('month', now()) + interval '1 month'), 0)
       )::bigint AS total_revenue_cents;

-- name: outstanding
WITH split AS (
    SELECT coalesce(max(v.month_end), '-infinity') AS at
    FROM monthly_invoice_stats AS v
    WHERE v.tenant_id = $1
      AND v.month_end <= (SELECT w.invoices_complete_before FROM views_watermark AS w
                          WHERE w.tenant_id = $1)
)
SELECT (coalesce((SELECT sum(v.balance_cents)
                  FROM monthly_invoice_stats AS v, split
                  WHERE v.tenant_id = $1
                    AND v.month_end <= split.at
                    AND v.status IN ('sent', 'overdue')), 0)
      + coalesce((SELECT sum(i.balance_cents)
                  FROM invoices AS i, split
                  WHERE i.tenant_id = $1
                    AND i.issued_at >= split.at
                    AND i.status IN ('sent', 'overdue')), 0)
       )::bigint AS outstanding_cents;

-- name: invoice_stats
WITH split AS (
    SELECT coalesce(max(v.month_end), '-infinity') AS at
    FROM monthly_invoice_stats AS v
    WHERE v.tenant_id = $1
      AND v.month_end <= (SELECT w.invoices_complete_before FROM views_watermark AS w
                          WHERE w.tenant_id = $1)
),
parts AS (
    SELECT v.status, v.invoice_count, v.amount_cents
    FROM monthly_invoice_stats AS v, split
    WHERE v.tenant_id = $1
      AND v.month_end <= split.at
    UNION ALL
    SELECT i.status, count(*), sum(i.amount_cents)
    FROM invoices AS i, split
    WHERE i.tenant_id = $1
      AND i.issued_at >= split.at
    GROUP BY i.status
)
SELECT s.status,
       coalesce(sum(p.invoice_count), 0)::bigint AS invoice_count,
       coalesce(sum(p.amount_cents), 0)::bigint AS amount_cents
FROM (VALUES ('draft'), ('sent'), ('paid'), ('overdue'), ('cancelled')) AS s (status)
LEFT JOIN parts AS p ON p.status = s.status
GROUP BY s.status
ORDER BY s.status;
