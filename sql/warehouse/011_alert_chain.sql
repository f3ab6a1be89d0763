-- Tamper evidence for alerts: a SHA-256 chain of its own beside the audit rows' chain, so that
-- deleting or editing an alert (say "price changed after invoice sent", with the append-only
-- triggers switched off) fails `bookaudit warehouse verify`. A trigger links each alert as it is
-- inserted, in the job's own transaction; an alert written with triggers off is in no chain.
CREATE TABLE IF NOT EXISTS audit.alert_chain (
    position   bigint PRIMARY KEY,
    alert      bigint NOT NULL UNIQUE REFERENCES audit.alerts (id),
    prev_hash  bytea  NOT NULL,
    hash       bytea  NOT NULL
);

SELECT audit.make_append_only(ARRAY['alert_chain']);

CREATE OR REPLACE FUNCTION audit.alert_chain_genesis() RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(convert_to('bookaudit alert chain v1', 'UTF8')) $$;

-- The columns are named, so a column added later does not change every earlier hash; times are
-- hashed as epoch numbers, since their text form would follow the session's TimeZone.
CREATE OR REPLACE FUNCTION audit.alert_canonical(alert bigint) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to(jsonb_build_object(
        'id', a.id, 'alert_id', a.alert_id, 'rule', a.rule, 'kind', a.kind,
        'severity', a.severity, 'message', a.message, 'source', a.source,
        'commit_lsn', a.commit_lsn::text, 'sequence', a.sequence, 'txid', a.txid,
        'committed_at', extract(epoch FROM a.committed_at)::text, 'table_name', a.table_name,
        'booking_id', a.booking_id, 'actor', a.actor, 'actor_role', a.actor_role,
        'approval_ref', a.approval_ref, 'old_price', a.old_price::text,
        'new_price', a.new_price::text, 'change_pct', a.change_pct::text,
        'document', a.document, 'recorded_at', extract(epoch FROM a.recorded_at)::text
    )::text, 'UTF8')
    FROM audit.alerts a
    WHERE a.id = alert
$$;

-- The advisory lock is held until commit, so concurrent alert jobs append one after another.
CREATE OR REPLACE FUNCTION audit.alert_chain_append(alerts bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last_position bigint;
    last_hash bytea;
    alert bigint;
    next_hash bytea;
BEGIN
    IF alerts IS NULL OR cardinality(alerts) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('bookaudit.audit.alert_chain'));
    SELECT c.position, c.hash INTO last_position, last_hash
    FROM audit.alert_chain c ORDER BY c.position DESC LIMIT 1;
    IF last_position IS NULL THEN
        last_position := 0;
        last_hash := audit.alert_chain_genesis();
    END IF;
    FOREACH alert IN ARRAY (SELECT array_agg(x ORDER BY x) FROM unnest(alerts) x) LOOP
        last_position := last_position + 1;
        next_hash := sha256(last_hash || audit.alert_canonical(alert));
        INSERT INTO audit.alert_chain (position, alert, prev_hash, hash)
        VALUES (last_position, alert, last_hash, next_hash);
        last_hash := next_hash;
    END LOOP;
    RETURN cardinality(alerts);
END
$$;

CREATE OR REPLACE FUNCTION audit.chain_new_alert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM audit.alert_chain_append(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS chain_alert ON audit.alerts;
CREATE TRIGGER chain_alert AFTER INSERT ON audit.alerts
    FOR EACH ROW EXECUTE FUNCTION audit.chain_new_alert();

-- A warehouse upgraded from before this chain: its alerts are linked as found, once, while the
-- chain is still empty (never later, or a rerun of init would adopt an alert slipped in).
SELECT audit.alert_chain_append(array(SELECT a.id FROM audit.alerts a ORDER BY a.id))
WHERE NOT EXISTS (SELECT 1 FROM audit.alert_chain);

CREATE OR REPLACE FUNCTION audit.verify_alert_chain() RETURNS TABLE (problem text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    prev bytea := audit.alert_chain_genesis();
    expected bigint := 1;
    link record;
    content bytea;
    orphan bigint;
BEGIN
    FOR link IN SELECT * FROM audit.alert_chain ORDER BY position LOOP
        IF link.position <> expected THEN
            problem := format('alert chain positions %s to %s are missing',
                              expected, link.position - 1);
            RETURN NEXT;
        END IF;
        IF link.prev_hash <> prev THEN
            problem := format('alert chain position %s does not link to the entry before it',
                              link.position);
            RETURN NEXT;
        END IF;
        content := audit.alert_canonical(link.alert);
        IF content IS NULL THEN
            problem := format('alert %s (alert chain position %s) was deleted',
                              link.alert, link.position);
            RETURN NEXT;
        ELSIF sha256(link.prev_hash || content) <> link.hash THEN
            problem := format('alert %s (alert chain position %s) was modified',
                              link.alert, link.position);
            RETURN NEXT;
        END IF;
        prev := link.hash;
        expected := link.position + 1;
    END LOOP;
    FOR orphan IN
        SELECT a.id FROM audit.alerts a
        WHERE NOT EXISTS (SELECT 1 FROM audit.alert_chain c WHERE c.alert = a.id)
        ORDER BY a.id
    LOOP
        problem := format('alert %s is not in the alert chain: it was written around the alerts job',
                          orphan);
        RETURN NEXT;
    END LOOP;
END
$$;
