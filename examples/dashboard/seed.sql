-- Deterministic seed data for the dashboard example. Run it right after
-- schema.sql (it inserts fixed ids, so it needs empty tables).
--
-- Format, for the program that runs it:
--   * {{TENANTS}} is a placeholder for the number of tenants (a positive
--     integer); substitute it before running. Default: 20.
--   * The file is a list of ordered steps. Each starts with a line
--     `-- step: NAME` and holds exactly one statement; run them one at a time
--     (batch_execute per step), in order. Text before the first step marker is
--     this comment. One statement per step matters: VACUUM refuses to run in a
--     multi-statement batch.
--
-- Determinism: no random(); every value is arithmetic on generate_series
-- values. Dates are relative to ANCHOR = date_trunc('month', now()), the start
-- of the current month (in the session's TimeZone), so "this month's payments"
-- always has data. The data therefore shifts from month to month; tests compare
-- the widget queries with the independent formulations in verify.sql within the
-- same run, never with constants. days overdue also depends on current_date.
--
-- Shape, for tenant number t (tenant id 'tenant-0001' for t = 1):
--   children  C(t) = 1600 + 60 t, child c belongs to parent (2c + 2) / 3, so
--             parents have one or two children; every 11th child is withdrawn
--   invoices  one per child per month for months m = 0 (this month) .. 11;
--             withdrawn children left 3 months ago (no invoices for m < 3)
--   payments  1 or 2 per paid invoice, 1 per partly paid invoice
-- Every count and amount depends on t, so no two tenants share any widget
-- value and a query missing its tenant filter shows up. At 20 tenants: 29 740
-- parents, 44 600 children, 523 065 invoices, 585 255 payments.
--
-- Ids are derived, not drawn from sequences: parent t*1e6+p, child t*1e6+c,
-- invoice (t*1e6+c)*100+m, payment invoice*10+k.

-- step: tenants
INSERT INTO tenants (id, name, created_at)
SELECT 'tenant-' || lpad(t::text, greatest(4, length(t::text)), '0'),
       (ARRAY['Little Acorns', 'Sunbeam', 'Rainbow Kids', 'Happy Feet', 'Busy Bees',
              'Tiny Tots', 'Kangaroo Club', 'Blue Sky'])[1 + t % 8] || ' Creche ' || t,
       date_trunc('month', now()) - make_interval(years => 2, days => t)
FROM generate_series(1, {{TENANTS}}) AS t;

-- step: parents
INSERT INTO parents (tenant_id, id, name, email)
SELECT 'tenant-' || lpad(t::text, greatest(4, length(t::text)), '0'),
       t * 1000000 + p,
       (ARRAY['Thandi', 'Sipho', 'Lerato', 'Johan', 'Priya', 'Ayanda', 'Marike', 'Kagiso',
              'Fatima', 'Pieter', 'Nomsa', 'David', 'Zanele', 'Ruan', 'Naledi'])[1 + (p * 7) % 15]
       || ' ' ||
       (ARRAY['Dlamini', 'Nkosi', 'van der Merwe', 'Naidoo', 'Botha', 'Mokoena', 'Pillay',
              'Khumalo', 'Smith', 'Ndlovu', 'Coetzee', 'Mahlangu', 'Jacobs'])[1 + (p * 3 + t) % 13],
       'parent' || p || '@t' || t || '.example.test'
FROM generate_series(1, {{TENANTS}}) AS t,
     generate_series(1, (2 * (1600 + 60 * t) + 2) / 3) AS p;

-- step: children
INSERT INTO children (tenant_id, id, parent_id, name, date_of_birth, status)
SELECT 'tenant-' || lpad(t::text, greatest(4, length(t::text)), '0'),
       t * 1000000 + c,
       t * 1000000 + (2 * c + 2) / 3,
       (ARRAY['Lwazi', 'Amara', 'Liam', 'Zoe', 'Musa', 'Ava', 'Neo', 'Mia', 'Ethan',
              'Lindiwe', 'Noah', 'Emma', 'Bongani'])[1 + (c * 5) % 13]
       || ' ' ||
       -- the parent's surname (same expression as in step parents)
       (ARRAY['Dlamini', 'Nkosi', 'van der Merwe', 'Naidoo', 'Botha', 'Mokoena', 'Pillay',
              'Khumalo', 'Smith', 'Ndlovu', 'Coetzee', 'Mahlangu', 'Jacobs'])[1 + (((2 * c + 2) / 3) * 3 + t) % 13],
       date_trunc('month', now())::date - (365 + (c * 37) % 1460),
       CASE WHEN c % 11 = 0 THEN 'withdrawn' ELSE 'active' END
FROM generate_series(1, {{TENANTS}}) AS t,
     generate_series(1, 1600 + 60 * t) AS c;

-- step: invoices
-- Month m = 0 is this month (due in the future: draft, sent or already paid);
-- older months are paid, overdue (some partly paid) or cancelled.
INSERT INTO invoices (tenant_id, id, parent_id, child_id, status, amount_cents, paid_cents,
                      issued_at, due_date)
SELECT tenant_id, id, parent_id, child_id, status, amount_cents,
       CASE status
           WHEN 'paid' THEN amount_cents
           WHEN 'sent' THEN CASE WHEN c % 7 = 0 THEN amount_cents / 2 ELSE 0 END
           WHEN 'overdue' THEN CASE WHEN c % 3 = 0 THEN amount_cents / 3 ELSE 0 END
           ELSE 0
       END,
       issued_at, due_date
FROM (
    SELECT 'tenant-' || lpad(t::text, greatest(4, length(t::text)), '0') AS tenant_id,
           (t * 1000000 + c) * 100 + m AS id,
           t * 1000000 + (2 * c + 2) / 3 AS parent_id,
           t * 1000000 + c AS child_id,
           c,
           CASE
               WHEN m = 0 AND c % 10 = 0 THEN 'draft'
               WHEN m = 0 AND c % 3 = 0 THEN 'paid'
               WHEN m = 0 THEN 'sent'
               WHEN (c * 7 + m * 3 + t) % 97 = 0 THEN 'cancelled'
               WHEN (c + m + t) % 19 = 0 OR (m = 1 AND c % 5 = 0) THEN 'overdue'
               ELSE 'paid'
           END AS status,
           250000 + t * 1300 + (c % 9) * 4100 + m * 700 AS amount_cents,
           date_trunc('month', now()) - make_interval(months => m) + make_interval(mins => c % 720)
               AS issued_at,
           (date_trunc('month', now()) - make_interval(months => m))::date + 14 AS due_date
    FROM generate_series(1, {{TENANTS}}) AS t,
         generate_series(1, 1600 + 60 * t) AS c,
         generate_series(0, 11) AS m
    WHERE NOT (c % 11 = 0 AND m < 3)
) AS i;

-- step: payments
-- Paid invoices with child number divisible by 4 were paid in two instalments.
-- This month's payments land in the first hours of the month; older ones
-- within 2-18 days of issue, so always inside the invoice's month.
INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at)
SELECT i.tenant_id,
       i.id * 10 + k,
       i.id,
       i.parent_id,
       i.child_id,
       CASE WHEN n = 1 THEN i.paid_cents
            WHEN k = 1 THEN i.paid_cents / 2
            ELSE i.paid_cents - i.paid_cents / 2 END,
       (ARRAY['eft', 'card', 'cash', 'debit_order'])[1 + (i.id + k) % 4],
       i.issued_at + CASE WHEN i.id % 100 = 0 THEN make_interval(hours => 2 * k)
                          ELSE make_interval(days => (2 + (i.child_id % 1000000) % 10 + (k - 1) * 7)::int) END
FROM invoices AS i,
     LATERAL (SELECT CASE WHEN i.status = 'paid' AND (i.child_id % 1000000) % 4 = 0 THEN 2 ELSE 1 END) AS nn(n),
     generate_series(1, n) AS k
WHERE i.paid_cents > 0;

-- step: fk-parents
-- Foreign keys (see schema.sql): composite, so every row points at rows of its
-- own tenant. Added after the load so each is validated in one pass.
ALTER TABLE parents
    ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id);

-- step: fk-children
ALTER TABLE children
    ADD FOREIGN KEY (tenant_id, parent_id) REFERENCES parents (tenant_id, id);

-- step: fk-invoices
ALTER TABLE invoices
    ADD FOREIGN KEY (tenant_id, parent_id) REFERENCES parents (tenant_id, id),
    ADD FOREIGN KEY (tenant_id, child_id) REFERENCES children (tenant_id, id);

-- step: fk-payments
ALTER TABLE payments
    ADD FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, id),
    ADD FOREIGN KEY (tenant_id, parent_id) REFERENCES parents (tenant_id, id),
    ADD FOREIGN KEY (tenant_id, child_id) REFERENCES children (tenant_id, id);

-- step: vacuum-analyze
-- Statistics for the planner, and the visibility map for index-only scans.
VACUUM (ANALYZE) tenants, parents, children, invoices, payments;
