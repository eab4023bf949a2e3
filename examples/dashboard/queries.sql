-- The six dashboard widgets. Each query starts with a `-- name: NAME` line, takes
-- the tenant id as $1 (text) and filters by it; the columns and their
-- PostgreSQL types are listed above each. Amounts are integer cents. All of
-- them are answered from the tenant-first indexes in schema.sql (mostly
-- index-only scans).
--
-- "This month" is date_trunc('month', now()) .. +1 month in the session's
-- TimeZone; seed.sql anchors its dates the same way.

-- name: total_revenue
-- Sum of the payments received this month.
-- total_revenue_cents bigint (one row)
SELECT coalesce(sum(amount_cents), 0)::bigint AS total_revenue_cents
FROM payments
WHERE tenant_id = $1
  AND paid_at >= date_trunc('month', now())
  AND paid_at < date_trunc('month', now()) + interval '1 month';

-- name: outstanding
-- What parents still owe on invoices that have been sent (overdue included).
-- outstanding_cents bigint (one row)
SELECT coalesce(sum(balance_cents), 0)::bigint AS outstanding_cents
FROM invoices
WHERE tenant_id = $1
  AND status IN ('sent', 'overdue');

-- name: child_count
-- Children currently enrolled.
-- child_count bigint (one row)
SELECT count(*) AS child_count
FROM children
WHERE tenant_id = $1
  AND status = 'active';

-- name: invoice_stats
-- Number and total amount of invoices per status, one row for every status
-- (zero when a tenant has none), ordered by status.
-- status text, invoice_count bigint, amount_cents bigint (five rows)
SELECT s.status,
       coalesce(a.invoice_count, 0) AS invoice_count,
       coalesce(a.amount_cents, 0) AS amount_cents
FROM (VALUES ('draft'), ('sent'), ('paid'), ('overdue'), ('cancelled')) AS s (status)
LEFT JOIN (
    SELECT status,
           count(*) AS invoice_count,
           sum(amount_cents)::bigint AS amount_cents
    FROM invoices
    WHERE tenant_id = $1
    GROUP BY status
) AS a ON a.status = s.status
ORDER BY s.status;

-- name: recent_payments
-- The ten latest payments, newest first (ties broken by id, newest first).
-- payment_id bigint, paid_at timestamptz, amount_cents bigint,
-- parent_name text, child_name text (up to ten rows)
SELECT p.id AS payment_id,
       p.paid_at,
       p.amount_cents,
       pa.name AS parent_name,
       c.name AS child_name
FROM (
    SELECT id, parent_id, child_id, amount_cents, paid_at
    FROM payments
    WHERE tenant_id = $1
    ORDER BY paid_at DESC, id DESC
    LIMIT 10
) AS p
JOIN parents AS pa ON pa.tenant_id = $1 AND pa.id = p.parent_id
JOIN children AS c ON c.tenant_id = $1 AND c.id = p.child_id
ORDER BY p.paid_at DESC, p.id DESC;

-- name: arrears
-- The 20 parents owing most on overdue invoices, with how many days ago their
-- oldest unpaid overdue invoice fell due; ties broken by parent id.
-- parent_id bigint, parent_name text, overdue_cents bigint,
-- days_overdue integer (up to 20 rows)
SELECT o.parent_id,
       pa.name AS parent_name,
       o.overdue_cents,
       current_date - o.oldest_due_date AS days_overdue
FROM (
    SELECT parent_id,
           sum(balance_cents)::bigint AS overdue_cents,
           min(due_date) AS oldest_due_date
    FROM invoices
    WHERE tenant_id = $1
      AND status = 'overdue'
      AND balance_cents > 0
    GROUP BY parent_id
    ORDER BY overdue_cents DESC, parent_id
    LIMIT 20
) AS o
JOIN parents AS pa ON pa.tenant_id = $1 AND pa.id = o.parent_id
ORDER BY o.overdue_cents DESC, o.parent_id;
