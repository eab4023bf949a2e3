//! Realistic writes for watching live dashboards move: payments allocated
//! to a tenant's open invoices, and invoices falling overdue. Each write is
//! one transaction, so the triggers of `notify.sql` announce it when, and
//! only if, it commits.

use fanout::TenantId;
use tokio_postgres::Client;

/// What one write did.
#[derive(Debug)]
pub enum Wrote {
    /// A payment of this many cents (the invoice's balance at most).
    Payment { amount_cents: i64 },
    /// An invoice moved from sent to overdue.
    Overdue,
    /// The tenant had no invoice to pay or to mark overdue.
    Nothing,
}

/// Pays up to `amount_cents` of the tenant's oldest open invoice: a
/// payment row, and the invoice's `paid_cents` (and status, when settled),
/// in one transaction.
pub async fn pay(
    client: &mut Client,
    tenant: &TenantId,
    amount_cents: i64,
) -> Result<Wrote, String> {
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let row = tx
        .query_opt(
            "WITH open AS (
                 SELECT id, parent_id, child_id, least($2, amount_cents - paid_cents) AS amount
                 FROM invoices
                 WHERE tenant_id = $1 AND status IN ('sent', 'overdue') AND paid_cents < amount_cents
                 ORDER BY issued_at, id
                 LIMIT 1
                 FOR UPDATE
             ), settled AS (
                 UPDATE invoices AS i
                 SET paid_cents = i.paid_cents + open.amount,
                     status = CASE WHEN i.paid_cents + open.amount = i.amount_cents THEN 'paid' ELSE i.status END
                 FROM open
                 WHERE i.tenant_id = $1 AND i.id = open.id
             )
             INSERT INTO payments (tenant_id, id, invoice_id, parent_id, child_id, amount_cents, method, paid_at)
             SELECT $1, (SELECT coalesce(max(id), 0) + 1 FROM payments WHERE tenant_id = $1),
                    open.id, open.parent_id, open.child_id, open.amount, 'eft', now()
             FROM open
             RETURNING amount_cents",
            &[&tenant.as_str(), &amount_cents],
        )
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(row.map_or(Wrote::Nothing, |row| Wrote::Payment {
        amount_cents: row.get(0),
    }))
}

/// Marks the tenant's oldest sent invoice overdue.
pub async fn fall_overdue(client: &Client, tenant: &TenantId) -> Result<Wrote, String> {
    let changed = client
        .execute(
            "UPDATE invoices SET status = 'overdue'
             WHERE tenant_id = $1 AND id = (
                 SELECT id FROM invoices WHERE tenant_id = $1 AND status = 'sent'
                 ORDER BY issued_at, id LIMIT 1)",
            &[&tenant.as_str()],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(if changed == 1 {
        Wrote::Overdue
    } else {
        Wrote::Nothing
    })
}
