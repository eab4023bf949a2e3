-- Independent formulations of the six widgets in queries.sql, for tests: same
-- `-- name:` headers, same $1 (tenant id), same columns, types and row order,
-- so a test can compare the rows of each pair for equality.
--
-- Each one computes its value another way, so that a bug in a widget query is
-- unlikely to be repeated here:
--   * money owed is recomputed from the payments table instead of the
--     invoices.paid_cents / balance_cents columns;
--   * other predicates (date_trunc equality instead of a range, NOT IN instead
--     of IN), joins from the other side, window functions and correlated
--     subqueries instead of GROUP BY and LIMIT.
-- They are not tuned for speed (tens of milliseconds at the default size).

-- name: total_revenue
SELECT coalesce(sum(p.amount_cents), 0)::bigint AS total_revenue_cents
FROM tenants AS t
JOIN payments AS p ON p.tenant_id = t.id
WHERE t.id = $1
  AND date_trunc('month', p.paid_at) = date_trunc('month', now());

-- name: outstanding
WITH paid AS (
    SELECT invoice_id, sum(amount_cents) AS paid_cents
    FROM payments
    WHERE tenant_id = $1
    GROUP BY invoice_id
)
SELECT coalesce(sum(i.amount_cents - coalesce(paid.paid_cents, 0)), 0)::bigint AS outstanding_cents
FROM invoices AS i
LEFT JOIN paid ON paid.invoice_id = i.id
WHERE i.tenant_id = $1
  AND i.status NOT IN ('draft', 'paid', 'cancelled');

-- name: child_count
SELECT coalesce(sum(CASE WHEN c.status = 'active' THEN 1 ELSE 0 END), 0)::bigint AS child_count
FROM parents AS pa
JOIN children AS c ON c.tenant_id = pa.tenant_id AND c.parent_id = pa.id
WHERE pa.tenant_id = $1;

-- name: invoice_stats
SELECT s.status,
       coalesce(w.invoice_count, 0)::bigint AS invoice_count,
       coalesce(w.amount_cents, 0)::bigint AS amount_cents
FROM unnest(ARRAY['cancelled', 'draft', 'overdue', 'paid', 'sent']) AS s (status)
LEFT JOIN (
    SELECT DISTINCT status,
           count(*) OVER (PARTITION BY status) AS invoice_count,
           sum(amount_cents) OVER (PARTITION BY status) AS amount_cents
    FROM invoices
    WHERE tenant_id = $1
) AS w ON w.status = s.status
ORDER BY s.status;

-- name: recent_payments
SELECT r.id AS payment_id,
       r.paid_at,
       r.amount_cents,
       (SELECT pa.name FROM parents AS pa WHERE pa.tenant_id = r.tenant_id AND pa.id = r.parent_id)
           AS parent_name,
       (SELECT c.name FROM children AS c WHERE c.tenant_id = r.tenant_id AND c.id = r.child_id)
           AS child_name
FROM (
    SELECT p.*, row_number() OVER (ORDER BY p.paid_at DESC, p.id DESC) AS rn
    FROM payments AS p
    WHERE p.tenant_id = $1
) AS r
WHERE r.rn <= 10
ORDER BY r.rn;

-- name: arrears
WITH paid AS (
    SELECT invoice_id, sum(amount_cents) AS paid_cents
    FROM payments
    WHERE tenant_id = $1
    GROUP BY invoice_id
),
owed AS (
    SELECT i.parent_id, i.due_date, i.amount_cents - coalesce(paid.paid_cents, 0) AS owed_cents
    FROM invoices AS i
    LEFT JOIN paid ON paid.invoice_id = i.id
    WHERE i.tenant_id = $1
      AND i.status = 'overdue'
),
per_parent AS (
    SELECT DISTINCT parent_id,
           sum(owed_cents) OVER (PARTITION BY parent_id) AS overdue_cents,
           first_value(due_date) OVER (PARTITION BY parent_id ORDER BY due_date) AS oldest_due_date
    FROM owed
    WHERE owed_cents > 0
),
ranked AS (
    SELECT pa.id AS parent_id,
           pa.name AS parent_name,
           pp.overdue_cents::bigint AS overdue_cents,
           current_date - pp.oldest_due_date AS days_overdue,
           row_number() OVER (ORDER BY pp.overdue_cents DESC, pa.id) AS rn
    FROM parents AS pa
    JOIN per_parent AS pp ON pp.parent_id = pa.id
    WHERE pa.tenant_id = $1
)
SELECT parent_id, parent_name, overdue_cents, days_overdue
FROM ranked
WHERE rn <= 20
ORDER BY rn;
