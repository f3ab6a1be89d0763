-- Views for the office and analysts: the labelled timeline of a booking, a customer's history,
-- the booking history log with its counts, one user's activity, and the booking as of a moment.
-- No table or column name of any schema appears here: audit.entity_map says which table holds
-- bookings, how related tables reach a booking, which fields mean what, and which are noise.

-- Views change columns between releases; CREATE OR REPLACE cannot, so they are rebuilt.
DROP VIEW IF EXISTS audit.booking_log, audit.actor_activity, audit.customer_history,
    audit.booking_history, audit.booking_history_log, audit.booking_customers,
    audit.timeline, audit.map_tables CASCADE;

-- The one value of a single-column key, e.g. {"id": "42"} -> '42'.
CREATE OR REPLACE FUNCTION audit.key_value(row_key jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(row_key) = 'object'
                 AND (SELECT count(*) FROM jsonb_object_keys(row_key)) = 1
                THEN (SELECT value FROM jsonb_each_text(row_key))
           END
$$;

-- The entity map, as `bookaudit warehouse init` last wrote it (one row). Configuration, not
-- audit data, so it is replaced on init rather than appended.
CREATE TABLE IF NOT EXISTS audit.entity_map (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    map        jsonb   NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

-- Every mapped table with its kind and the column through which its rows name their booking.
CREATE VIEW audit.map_tables AS
SELECT m.map #>> '{booking,table}' AS table_name, 'booking' AS kind,
       m.map #>> '{booking,key}' AS booking_column, m.map -> 'booking' AS spec
FROM audit.entity_map m
UNION ALL
SELECT m.map #>> '{customer,table}', 'customer', NULL, m.map -> 'customer'
FROM audit.entity_map m WHERE m.map ? 'customer'
UNION ALL
SELECT r ->> 'table', coalesce(r ->> 'kind', 'related'), r ->> 'booking_column', r
FROM audit.entity_map m, jsonb_array_elements(coalesce(m.map -> 'related', '[]')) r;

CREATE OR REPLACE FUNCTION audit.ignored_fields() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array(SELECT jsonb_array_elements_text(m.map -> 'ignore_fields')
                          FROM audit.entity_map m), '{}')
$$;

-- The fields of a mapped table that play one role (schedule, price, status, ...).
CREATE OR REPLACE FUNCTION audit.role_fields(spec jsonb, role text) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array(SELECT jsonb_array_elements_text(spec -> role)), '{}')
$$;

-- What a row change means to a person: one or more labels from the table's kind, the
-- operation and the visible fields it changed. `fields` excludes the ignored ones.
CREATE OR REPLACE FUNCTION audit.timeline_labels(
    kind text, spec jsonb, action text, baseline boolean, before jsonb, after jsonb, fields text[]
) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    labels text[] := '{}';
    f text;
    who text;
    amount numeric;
BEGIN
    IF action = 'truncate' THEN
        RETURN ARRAY['Truncated'];
    ELSIF baseline THEN
        RETURN ARRAY['Existing at install'];
    END IF;
    CASE kind
    WHEN 'booking' THEN
        IF action = 'insert' THEN RETURN ARRAY['Booking created']; END IF;
        IF action = 'delete' THEN RETURN ARRAY['Deleted']; END IF;
        f := (audit.role_fields(spec, 'status'))[1];
        IF f = ANY (fields) AND after ->> f = ANY (audit.role_fields(spec, 'cancel_values')) THEN
            labels := labels || 'Cancelled'::text;
        END IF;
        IF fields && audit.role_fields(spec, 'schedule') THEN
            IF NOT EXISTS (SELECT 1 FROM unnest(audit.role_fields(spec, 'schedule')) s
                           WHERE before ->> s IS NOT NULL) THEN
                labels := labels || 'Scheduled'::text;
            ELSE
                labels := labels || 'Rescheduled'::text;
            END IF;
        END IF;
        IF fields && audit.role_fields(spec, 'status') AND NOT 'Cancelled' = ANY (labels) THEN
            labels := labels || 'Status changed'::text;
        END IF;
        IF fields && audit.role_fields(spec, 'price') THEN
            labels := labels || 'Price changed'::text;
        END IF;
        FOREACH f IN ARRAY audit.role_fields(spec, 'assignment') LOOP
            IF f = ANY (fields) THEN
                labels := labels || CASE WHEN after ->> f IS NULL THEN 'Unassigned ' || (before ->> f)
                                         ELSE 'Assigned to ' || (after ->> f) END;
            END IF;
        END LOOP;
        IF cardinality(labels) = 0 THEN labels := ARRAY['Updated']; END IF;
        RETURN labels;
    WHEN 'customer' THEN
        RETURN ARRAY[CASE action WHEN 'insert' THEN 'Customer created'
                                 WHEN 'delete' THEN 'Customer deleted'
                                 ELSE 'Customer updated' END];
    WHEN 'assignment' THEN
        f := (audit.role_fields(spec, 'assignment'))[1];
        who := coalesce(after ->> f, before ->> f, '');
        IF action = 'insert' THEN RETURN ARRAY['Assigned to ' || who]; END IF;
        IF action = 'delete' THEN RETURN ARRAY['Unassigned ' || who]; END IF;
        IF f = ANY (fields) THEN RETURN ARRAY['Assigned to ' || who]; END IF;
        RETURN ARRAY['Assignment updated'];
    WHEN 'note' THEN
        RETURN ARRAY[CASE action WHEN 'insert' THEN 'Note added'
                                 WHEN 'delete' THEN 'Note deleted' ELSE 'Note edited' END];
    WHEN 'invoice' THEN
        IF action = 'delete' THEN RETURN ARRAY['Invoice deleted']; END IF;
        IF action = 'insert' THEN
            labels := ARRAY['Invoice created'];
        END IF;
        FOREACH f IN ARRAY audit.role_fields(spec, 'sent') LOOP
            IF after ->> f IS NOT NULL AND (before IS NULL OR before ->> f IS NULL) THEN
                labels := labels || 'Invoice sent'::text;
            END IF;
        END LOOP;
        IF action = 'update' AND fields && audit.role_fields(spec, 'status')
           AND NOT 'Invoice sent' = ANY (labels) THEN
            labels := labels || 'Invoice status changed'::text;
        END IF;
        IF action = 'update' AND fields && audit.role_fields(spec, 'amount') THEN
            labels := labels || 'Invoice amount changed'::text;
        END IF;
        IF cardinality(labels) = 0 THEN labels := ARRAY['Invoice updated']; END IF;
        RETURN labels;
    WHEN 'payment', 'refund' THEN
        IF action = 'delete' THEN RETURN ARRAY['Payment deleted']; END IF;
        IF action = 'update' THEN RETURN ARRAY['Payment updated']; END IF;
        f := (audit.role_fields(spec, 'amount'))[1];
        amount := CASE WHEN after ->> f ~ '^-?[0-9]+(\.[0-9]+)?$' THEN (after ->> f)::numeric END;
        IF kind = 'refund' OR amount < 0 THEN RETURN ARRAY['Refund recorded']; END IF;
        RETURN ARRAY['Payment recorded'];
    ELSE
        RETURN ARRAY[CASE action WHEN 'insert' THEN 'Created'
                                 WHEN 'delete' THEN 'Deleted' ELSE 'Updated' END];
    END CASE;
END
$$;

-- One label line from the labels: "Scheduled, status changed".
CREATE OR REPLACE FUNCTION audit.label_text(labels text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(CASE WHEN n = 1 THEN l ELSE lower(left(l, 1)) || substr(l, 2) END, ', '
                      ORDER BY n)
    FROM unnest(labels) WITH ORDINALITY AS u(l, n)
$$;

-- The actor as people read it: the application's user, else the database role and application.
CREATE OR REPLACE FUNCTION audit.actor_label(actor text, db_user text, application text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(actor, db_user || ' (db role' || coalesce(' via ' || application, '') || ')')
$$;

-- The timeline: one entry per row change of a mapped table, with its booking and customer, its
-- labels and its visible changed fields. An update that changed only ignored fields (such as
-- updated_at) is left out here and kept in audit.row_changes.
CREATE VIEW audit.timeline AS
WITH entries AS (
    SELECT r.*, t.kind, t.spec, t.booking_column,
           r.action = 'snapshot' AS baseline,
           coalesce(array(SELECT f.field FROM audit.field_changes f
                          WHERE f.change_id = r.id AND f.field <> ALL (audit.ignored_fields())
                          ORDER BY f.position), '{}') AS fields
    FROM audit.row_changes r
    JOIN audit.map_tables t ON t.table_name = r.table_name
)
SELECT e.id AS change_id,
       e.source,
       e.committed_at,
       e.commit_lsn,
       e.sequence,
       e.txid,
       e.schema_name,
       e.table_name,
       e.kind,
       e.action,
       e.baseline,
       e.row_key,
       audit.key_value(e.row_key) AS row_id,
       CASE e.kind WHEN 'booking' THEN audit.key_value(e.row_key)
                   WHEN 'customer' THEN NULL
                   ELSE coalesce(e.after ->> e.booking_column, e.before ->> e.booking_column)
       END AS booking_id,
       CASE e.kind WHEN 'customer' THEN audit.key_value(e.row_key)
                   WHEN 'booking' THEN coalesce(e.after ->> (e.spec ->> 'customer_column'),
                                                e.before ->> (e.spec ->> 'customer_column'))
       END AS customer_ref,
       audit.actor_label(e.actor, e.db_user, e.application) AS actor,
       e.actor AS app_actor,
       e.actor_role,
       e.actor_origin,
       e.reason,
       e.approval_ref,
       e.request_id,
       e.application,
       e.db_user,
       e.client_addr,
       l.labels,
       audit.label_text(l.labels) AS label,
       e.fields
FROM entries e
CROSS JOIN LATERAL (
    SELECT audit.timeline_labels(e.kind, e.spec, e.action, e.baseline, e.before, e.after, e.fields)
           AS labels
) l
WHERE e.action <> 'update' OR cardinality(e.fields) > 0;

-- Which customer a booking belongs to, per source (a booking can move between customers; every
-- customer it ever had sees it).
CREATE VIEW audit.booking_customers AS
SELECT DISTINCT t.source, t.booking_id, t.customer_ref AS customer_id
FROM audit.timeline t
WHERE t.kind = 'booking' AND t.customer_ref IS NOT NULL;

-- A booking's history, one row per visible changed field (an entry without fields, such as a
-- TRUNCATE, has one row with field NULL); `label` and `change_id` group the rows into entries.
CREATE VIEW audit.booking_history AS
SELECT t.source, t.booking_id, t.change_id, t.committed_at, t.commit_lsn, t.sequence, t.txid,
       t.schema_name, t.table_name, t.kind, t.action, t.row_key, t.row_id, t.label, t.labels,
       t.actor, t.app_actor, t.actor_role, t.actor_origin, t.reason, t.approval_ref,
       t.request_id, t.application, t.db_user, t.client_addr,
       f.field, f.position, f.old_value, f.new_value
FROM audit.timeline t
LEFT JOIN audit.field_changes f
       ON f.change_id = t.change_id AND f.field = ANY (t.fields)
WHERE t.booking_id IS NOT NULL;

-- A customer's own record plus everything on every booking they ever had.
CREATE VIEW audit.customer_history AS
SELECT bc.customer_id, b.*
FROM audit.booking_history b
JOIN audit.booking_customers bc ON bc.source = b.source AND bc.booking_id = b.booking_id
UNION ALL
SELECT t.row_id AS customer_id, t.source, NULL AS booking_id, t.change_id, t.committed_at,
       t.commit_lsn, t.sequence, t.txid, t.schema_name, t.table_name, t.kind, t.action,
       t.row_key, t.row_id, t.label, t.labels, t.actor, t.app_actor, t.actor_role,
       t.actor_origin, t.reason, t.approval_ref, t.request_id, t.application, t.db_user,
       t.client_addr, f.field, f.position, f.old_value, f.new_value
FROM audit.timeline t
LEFT JOIN audit.field_changes f ON f.change_id = t.change_id AND f.field = ANY (t.fields)
WHERE t.kind = 'customer';

-- The booking history log: one line per entry on a booking or a row related to it, with who,
-- the label and the fields; flags that the per-booking counts add up.
CREATE VIEW audit.booking_history_log AS
SELECT t.source,
       t.committed_at,
       (t.committed_at AT TIME ZONE 'UTC')::date AS day,
       t.booking_id,
       CASE WHEN t.kind = 'booking' AND t.action = 'insert' AND NOT t.baseline THEN 'created'
            WHEN t.kind = 'booking' AND t.action = 'delete' THEN 'deleted'
            ELSE 'modified' END AS event,
       t.change_id, t.table_name, t.kind, t.action, t.label, t.labels,
       t.actor, t.app_actor, t.db_user, t.actor_role, t.approval_ref, t.reason,
       array_to_string(t.fields, ', ') AS fields,
       'Rescheduled' = ANY (t.labels) AS rescheduled,
       'Cancelled' = ANY (t.labels) AS cancelled,
       'Price changed' = ANY (t.labels) AS price_changed,
       ('Status changed' = ANY (t.labels) OR 'Cancelled' = ANY (t.labels)) AS status_changed,
       t.txid, t.commit_lsn, t.sequence
FROM audit.timeline t
WHERE t.booking_id IS NOT NULL;

-- What one person did: matched on the application actor, or on the db role when none was set.
CREATE VIEW audit.actor_activity AS
SELECT coalesce(t.app_actor, t.db_user) AS who, t.*,
       f.position, f.field, f.old_value, f.new_value
FROM audit.timeline t
LEFT JOIN audit.field_changes f ON f.change_id = t.change_id AND f.field = ANY (t.fields);

-- A booking and its related rows exactly as they were at `at`: for every row that ever named
-- the booking, its last change committed at or before `at`, rebuilt from the baseline and the
-- changes. A row deleted by then, or moved to another booking, is absent.
CREATE OR REPLACE FUNCTION audit.booking_as_of(booking text, at timestamptz, src text DEFAULT NULL)
RETURNS TABLE (source text, table_name text, kind text, row_id text, row_key jsonb,
               row_data jsonb, changed_at timestamptz, change_id bigint)
LANGUAGE sql STABLE AS $$
    WITH candidates AS (
        SELECT DISTINCT t.source, t.schema_name, t.table_name, t.row_key
        FROM audit.timeline t
        WHERE t.booking_id = booking AND (src IS NULL OR t.source = src)
    ), latest AS (
        SELECT DISTINCT ON (c.source, c.schema_name, c.table_name, c.row_key)
               r.source, r.table_name, m.kind, m.booking_column, r.row_key, r.action,
               r.after, r.committed_at, r.id
        FROM candidates c
        JOIN audit.row_changes r
          ON r.source = c.source AND r.schema_name = c.schema_name
         AND r.table_name = c.table_name AND r.row_key = c.row_key
        JOIN audit.map_tables m ON m.table_name = r.table_name
        WHERE r.committed_at <= at AND r.action <> 'truncate'
        ORDER BY c.source, c.schema_name, c.table_name, c.row_key,
                 r.committed_at DESC, r.commit_lsn DESC, r.sequence DESC
    )
    SELECT l.source, l.table_name, l.kind, audit.key_value(l.row_key), l.row_key, l.after,
           l.committed_at, l.id
    FROM latest l
    WHERE l.action <> 'delete'
      AND (CASE WHEN l.kind = 'booking' THEN audit.key_value(l.row_key)
                ELSE l.after ->> l.booking_column END) = booking
    ORDER BY l.kind <> 'booking', l.table_name, l.row_key
$$;

-- What changed on a booking and its related rows between two moments, field by field, with who
-- changed each field in between (ignored fields left out).
CREATE OR REPLACE FUNCTION audit.booking_diff(
    booking text, t1 timestamptz, t2 timestamptz, src text DEFAULT NULL
) RETURNS TABLE (source text, table_name text, row_id text, field text, value_at_t1 text,
                 value_at_t2 text, changed_by text, last_changed_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH a AS (SELECT * FROM audit.booking_as_of(booking, t1, src)),
         b AS (SELECT * FROM audit.booking_as_of(booking, t2, src)),
         rows AS (
            SELECT coalesce(a.source, b.source) AS source,
                   coalesce(a.table_name, b.table_name) AS table_name,
                   coalesce(a.row_id, b.row_id) AS row_id,
                   coalesce(a.row_key, b.row_key) AS row_key,
                   coalesce(a.kind, b.kind) AS kind,
                   a.row_data AS old_row, b.row_data AS new_row
            FROM a FULL JOIN b
              ON a.source = b.source AND a.table_name = b.table_name AND a.row_key = b.row_key
         ), fields AS (
            SELECT r.*, k.field,
                   r.old_row ->> k.field AS old_value, r.new_row ->> k.field AS new_value
            FROM rows r
            CROSS JOIN LATERAL (
                SELECT jsonb_object_keys(coalesce(r.old_row, '{}') || coalesce(r.new_row, '{}'))
                       AS field
            ) k
            WHERE k.field <> ALL (audit.ignored_fields())
         )
    SELECT f.source, f.table_name, f.row_id, f.field, f.old_value, f.new_value,
           w.who, w.last_at
    FROM fields f
    LEFT JOIN LATERAL (
        SELECT string_agg(DISTINCT h.actor, ', ') AS who, max(h.committed_at) AS last_at
        FROM audit.field_history h
        WHERE h.source = f.source AND h.table_name = f.table_name AND h.row_key = f.row_key
          AND h.field = f.field
          AND h.committed_at > least(t1, t2) AND h.committed_at <= greatest(t1, t2)
    ) w ON true
    WHERE f.old_value IS DISTINCT FROM f.new_value
    ORDER BY f.kind <> 'booking', f.table_name, f.row_id, f.field
$$;
