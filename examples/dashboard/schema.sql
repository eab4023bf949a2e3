-- Schema for the dashboard example: a multi-tenant childcare billing SaaS.
--
-- Every row carries tenant_id and every dashboard query filters by it, so all
-- indexes lead with tenant_id. tenant_id is COLLATE "C": ids are ASCII
-- (^[A-Za-z0-9._-]{1,128}$), and byte order keeps comparisons and index builds
-- fast and identical whatever the database's default collation is.
--
-- Foreign keys are composite (tenant_id, id), so a child, invoice or payment
-- can only point at rows of its own tenant. They are added by the last steps of
-- seed.sql, after the load, as pg_dump does: checked row by row during the
-- load they would triple the seed time; added afterwards each is validated in
-- one pass.
--
-- The tables are UNLOGGED: this database is a throw-away for an example and
-- tests, so crash safety buys nothing and WAL would slow the seed down. A real
-- deployment would drop the UNLOGGED keyword; nothing else changes.
--
-- Re-runnable: drops and recreates everything. Run it with a multi-statement
-- call (tokio-postgres batch_execute, psql -f).

DROP TABLE IF EXISTS payments, invoices, children, parents, tenants CASCADE;

CREATE UNLOGGED TABLE tenants (
    id         text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,128}$'),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE UNLOGGED TABLE parents (
    tenant_id text COLLATE "C" NOT NULL,
    id        bigint NOT NULL,
    name      text   NOT NULL,
    email     text   NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE UNLOGGED TABLE children (
    tenant_id     text COLLATE "C" NOT NULL,
    id            bigint NOT NULL,
    parent_id     bigint NOT NULL,
    name          text   NOT NULL,
    date_of_birth date   NOT NULL,
    status        text   NOT NULL CHECK (status IN ('active', 'withdrawn')),
    PRIMARY KEY (tenant_id, id)
);

-- One invoice per child per month. balance_cents is what is still owed; it is
-- only "outstanding" while the invoice is sent or overdue (drafts are not yet
-- billed, cancelled ones are void).
CREATE UNLOGGED TABLE invoices (
    tenant_id     text COLLATE "C" NOT NULL,
    id            bigint      NOT NULL,
    parent_id     bigint      NOT NULL,
    child_id      bigint      NOT NULL,
    status        text        NOT NULL
                  CHECK (status IN ('draft', 'sent', 'paid', 'overdue', 'cancelled')),
    amount_cents  bigint      NOT NULL CHECK (amount_cents > 0),
    paid_cents    bigint      NOT NULL DEFAULT 0,
    balance_cents bigint      GENERATED ALWAYS AS (amount_cents - paid_cents) STORED,
    issued_at     timestamptz NOT NULL,
    due_date      date        NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CHECK (paid_cents BETWEEN 0 AND amount_cents)
);

-- Each payment settles (part of) one invoice; parent_id and child_id are
-- copied from it so the payments widgets need no join through invoices.
CREATE UNLOGGED TABLE payments (
    tenant_id    text COLLATE "C" NOT NULL,
    id           bigint      NOT NULL,
    invoice_id   bigint      NOT NULL,
    parent_id    bigint      NOT NULL,
    child_id     bigint      NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    method       text        NOT NULL CHECK (method IN ('eft', 'card', 'cash', 'debit_order')),
    paid_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Indexes for the six widgets (examples/dashboard/queries.sql). The primary
-- keys above serve the name look-ups of recent_payments and arrears.

-- total_revenue (range on paid_at, index-only thanks to INCLUDE) and
-- recent_payments (backward scan, newest first, id breaks ties).
CREATE INDEX payments_tenant_paid_at ON payments (tenant_id, paid_at, id) INCLUDE (amount_cents);

-- outstanding: only unpaid invoices, index-only.
CREATE INDEX invoices_tenant_unpaid ON invoices (tenant_id) INCLUDE (balance_cents)
    WHERE status IN ('sent', 'overdue');

-- invoice_stats: count and sum per status, index-only.
CREATE INDEX invoices_tenant_status ON invoices (tenant_id, status) INCLUDE (amount_cents);

-- arrears: overdue invoices grouped by parent, index-only.
CREATE INDEX invoices_tenant_overdue ON invoices (tenant_id, parent_id) INCLUDE (balance_cents, due_date)
    WHERE status = 'overdue';

-- child_count: active children only, index-only.
CREATE INDEX children_tenant_active ON children (tenant_id) WHERE status = 'active';

-- No indexes on the referencing side of the foreign keys (e.g. payments
-- (tenant_id, invoice_id)): they only speed up deleting or re-keying parents,
-- children and invoices, which the dashboard never does.
