-- Change notifications for live dashboards (fanout::live::ChangeFeed): each
-- committed payment or invoice change sends its tenant, the widgets it
-- affects and a domain event on the channel fanout_changes. A notification
-- is delivered when its transaction commits, never if it rolls back, so a
-- dashboard never shows a payment that did not happen.
--
-- Row-level triggers: one notification per row. That suits payments
-- arriving one at a time; a bulk import would rather notify once per
-- statement (FOR EACH STATEMENT with a transition table), since NOTIFY
-- takes a database-wide lock at commit. Payloads stay far below the
-- 8000-byte limit: ids and amounts, never the data itself.
--
-- Re-runnable: CREATE OR REPLACE, and the triggers are dropped first. Every
-- instance of the service runs it at start-up, so it runs in one transaction
-- under an advisory lock: two instances starting together would otherwise
-- race on CREATE OR REPLACE FUNCTION.

BEGIN;
SELECT pg_advisory_xact_lock(hashtext('fanout_notify.sql'));

CREATE OR REPLACE FUNCTION fanout_notify_payment() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fanout_changes', json_build_object(
        'tenant', NEW.tenant_id,
        'widgets', json_build_array('total_revenue', 'recent_payments'),
        'event', 'payment_received',
        'data', json_build_object(
            'tenant', NEW.tenant_id,
            'payment_id', NEW.id,
            'invoice_id', NEW.invoice_id,
            'amount_cents', NEW.amount_cents,
            'method', NEW.method))::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION fanout_notify_invoice() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_status text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
    event text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = OLD.status AND NEW.paid_cents = OLD.paid_cents
       AND NEW.amount_cents = OLD.amount_cents AND NEW.due_date = OLD.due_date THEN
        RETURN NULL; -- nothing a widget shows
    END IF;
    IF NEW.status = 'overdue' AND old_status IS DISTINCT FROM 'overdue' THEN
        event := 'arrears_alert';
    ELSIF NEW.status IS DISTINCT FROM old_status THEN
        event := 'invoice_status_changed';
    END IF;
    PERFORM pg_notify('fanout_changes', json_build_object(
        'tenant', NEW.tenant_id,
        'widgets', json_build_array('outstanding', 'invoice_stats', 'arrears'),
        'event', event,
        'data', json_build_object(
            'tenant', NEW.tenant_id,
            'invoice_id', NEW.id,
            'from', old_status,
            'to', NEW.status,
            'balance_cents', NEW.amount_cents - NEW.paid_cents))::text);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS fanout_payments_notify ON payments;
CREATE TRIGGER fanout_payments_notify AFTER INSERT ON payments
    FOR EACH ROW EXECUTE FUNCTION fanout_notify_payment();

DROP TRIGGER IF EXISTS fanout_invoices_notify ON invoices;
CREATE TRIGGER fanout_invoices_notify AFTER INSERT OR UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION fanout_notify_invoice();

COMMIT;
