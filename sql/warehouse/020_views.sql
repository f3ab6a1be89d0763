-- Views for the office and analysts: the labelled timeline of a booking, a customer's history,
-- the booking history log with its counts, one user's activity, and the booking as of a moment.
-- No table or column name of any schema appears here: each source's entity map
-- (003_entity_map.sql) says which table holds bookings, how related rows reach a booking, which
-- fields mean what and which are noise; every view carries `source`, so sources never mix.

-- Views change columns between releases; CREATE OR REPLACE cannot, so they are rebuilt.
DROP VIEW IF EXISTS audit.booking_log, audit.actor_activity, audit.customer_history,
    audit.booking_history, audit.booking_history_log, audit.booking_customers,
    audit.timeline CASCADE;

-- Per mapped table of each map: the roles of its fields as {"price": ["price"], ...}, plus the
-- map's cancelled status values, the table's sent column and its label: what the labels read.
-- Materialized (refreshed by apply_map whenever a map is written) because every timeline row
-- looks it up: computed per row it cost 0.36 ms, a third of a minute for a 50k-entry log.
DROP MATERIALIZED VIEW IF EXISTS audit.label_specs CASCADE;
CREATE MATERIALIZED VIEW audit.label_specs AS
SELECT t.source, t.schema_name, t.table_name,
       coalesce((SELECT jsonb_object_agg(x.role, x.fields)
                 FROM (SELECT f.role, jsonb_agg(f.field ORDER BY f.field) AS fields
                       FROM audit.entity_fields f
                       WHERE f.source = t.source AND f.schema_name = t.schema_name
                         AND f.table_name = t.table_name
                       GROUP BY f.role) x), '{}')
       || jsonb_build_object(
            'cancel_values', to_jsonb(m.cancelled_statuses),
            'sent', CASE WHEN t.sent_column IS NULL THEN '[]'::jsonb
                         ELSE jsonb_build_array(t.sent_column) END,
            'label', t.label) AS spec
FROM audit.entity_tables t
JOIN audit.entity_maps m ON m.source = t.source;
CREATE UNIQUE INDEX label_specs_table ON audit.label_specs (source, schema_name, table_name);

CREATE OR REPLACE FUNCTION audit.label_spec(p_source text, p_schema text, p_table text)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT s.spec FROM audit.label_specs s
    WHERE s.source = audit.map_of(p_source) AND s.schema_name = p_schema
      AND s.table_name = p_table
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
        IF action = 'update' AND fields && audit.role_fields(spec, 'price') THEN
            labels := labels || 'Invoice amount changed'::text;
        END IF;
        IF cardinality(labels) = 0 THEN labels := ARRAY['Invoice updated']; END IF;
        RETURN labels;
    WHEN 'payment', 'refund' THEN
        IF action = 'delete' THEN RETURN ARRAY['Payment deleted']; END IF;
        IF action = 'update' THEN RETURN ARRAY['Payment updated']; END IF;
        f := (audit.role_fields(spec, 'price'))[1];
        amount := CASE WHEN after ->> f ~ '^-?[0-9]+(\.[0-9]+)?$' THEN (after ->> f)::numeric END;
        IF kind = 'refund' OR amount < 0 THEN RETURN ARRAY['Refund recorded']; END IF;
        RETURN ARRAY['Payment recorded'];
    ELSE
        -- Any other related table: its label from the map ("Visit added").
        RETURN ARRAY[coalesce(spec ->> 'label', 'Row') || CASE action WHEN 'insert' THEN ' added'
                                 WHEN 'delete' THEN ' deleted' ELSE ' updated' END];
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

-- The timeline: one entry per (row change, booking) of a mapped table, or per change of a
-- customer, with its labels and its visible changed fields. An update that changed only ignored
-- fields (such as updated_at) is left out here and kept in audit.row_changes.
CREATE VIEW audit.timeline AS
WITH entries AS (
    SELECT r.*, c.kind, c.row_id, c.customer_column, c.booking_column, c.through_column,
           b.booking_id,
           audit.label_spec(r.source, r.schema_name, r.table_name) AS spec,
           -- A row as it stood when the audit started (the install's baseline, Debezium op r).
           r.action = 'existing' AS baseline,
           coalesce(array(SELECT f.field FROM audit.field_changes f
                          WHERE f.change_id = r.id AND f.field <> ALL (m.ignore_fields)
                          ORDER BY f.position), '{}') AS fields
    FROM audit.change_entities c
    JOIN audit.row_changes r ON r.id = c.change_id
    JOIN audit.entity_maps m ON m.source = c.map
    LEFT JOIN audit.booking_links b ON b.change_id = c.change_id
    WHERE c.kind = 'customer' OR b.booking_id IS NOT NULL
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
       e.row_id,
       e.booking_id,
       CASE e.kind WHEN 'customer' THEN e.row_id
                   WHEN 'booking' THEN coalesce(e.after ->> e.customer_column,
                                                e.before ->> e.customer_column)
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
       e.fields,
       -- The key and the booking link of the row: shown in a folded new row only as its place.
       array(SELECT jsonb_object_keys(coalesce(e.row_key, '{}'))) || e.booking_column
           || e.through_column AS link_fields
FROM entries e
CROSS JOIN LATERAL (
    SELECT audit.timeline_labels(e.kind, e.spec, e.action, e.baseline, e.before, e.after, e.fields)
           AS labels
    OFFSET 0  -- computed once per row: pulled up, every use of `labels` would call it again
) l
WHERE e.action <> 'update' OR cardinality(e.fields) > 0;

-- Which customer a booking belongs to, per source (a booking can move between customers; every
-- customer it ever had sees it).
CREATE VIEW audit.booking_customers AS
SELECT DISTINCT cl.source, bl.booking_id, cl.customer_id
FROM audit.customer_links cl
JOIN audit.booking_links bl ON bl.change_id = cl.change_id;

-- A booking's history, one row per visible changed field (an entry without fields, such as a
-- TRUNCATE, has one row with field NULL); `label` and `change_id` group the rows into entries.
CREATE VIEW audit.booking_history AS
SELECT t.source, t.booking_id, t.change_id, t.committed_at, t.commit_lsn, t.sequence, t.txid,
       t.schema_name, t.table_name, t.kind, t.action, t.row_key, t.row_id, t.label, t.labels,
       t.actor, t.app_actor, t.actor_role, t.actor_origin, t.reason, t.approval_ref,
       t.request_id, t.application, t.db_user, t.client_addr,
       f.field, f.position, f.old_value, f.new_value, t.link_fields
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
SELECT cl.customer_id, cl.source, NULL AS booking_id, t.change_id, t.committed_at,
       t.commit_lsn, t.sequence, t.txid, t.schema_name, t.table_name, t.kind, t.action,
       t.row_key, t.row_id, t.label, t.labels, t.actor, t.app_actor, t.actor_role,
       t.actor_origin, t.reason, t.approval_ref, t.request_id, t.application, t.db_user,
       t.client_addr, f.field, f.position, f.old_value, f.new_value, t.link_fields
FROM audit.customer_links cl
JOIN audit.timeline t ON t.change_id = cl.change_id
LEFT JOIN audit.field_changes f ON f.change_id = t.change_id AND f.field = ANY (t.fields)
WHERE t.kind = 'customer';

-- The booking history log: one line per entry on a booking or a row related to it, with who,
-- the label and the fields; flags that the per-booking counts add up.
CREATE VIEW audit.booking_history_log AS
SELECT t.source,
       t.committed_at,
       (t.committed_at AT TIME ZONE 'UTC')::date AS day,
       t.booking_id,
       CASE WHEN t.baseline THEN 'existing at install'
            WHEN t.kind = 'booking' AND t.action = 'insert' THEN 'created'
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
SELECT audit.actor_identity(t.app_actor, t.db_user) AS who, t.*,
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
        SELECT DISTINCT b.source, b.schema_name, b.table_name, c.row_id
        FROM audit.change_bookings b
        JOIN audit.change_entities c ON c.change_id = b.change_id
        WHERE b.booking_id = booking AND (src IS NULL OR b.source = src)
    ), latest AS (
        SELECT DISTINCT ON (k.source, k.schema_name, k.table_name, k.row_id)
               r.source, r.table_name, e.kind, e.booking_column, e.through_schema,
               e.through_table, e.through_column, r.row_key, r.action, r.after,
               r.committed_at, r.id
        FROM candidates k
        JOIN audit.row_changes r
          ON r.source = k.source AND r.schema_name = k.schema_name
         AND r.table_name = k.table_name AND audit.key_value(r.row_key) = k.row_id
        JOIN audit.change_entities e ON e.change_id = r.id
        WHERE r.committed_at <= at AND r.action <> 'truncate'
        ORDER BY k.source, k.schema_name, k.table_name, k.row_id,
                 r.committed_at DESC, r.commit_lsn DESC, r.sequence DESC
    )
    SELECT l.source, l.table_name, l.kind, audit.key_value(l.row_key), l.row_key, l.after,
           l.committed_at, l.id
    FROM latest l
    WHERE l.action <> 'delete'
      AND booking = CASE WHEN l.kind = 'booking' THEN audit.key_value(l.row_key)
                         WHEN l.booking_column IS NOT NULL THEN l.after ->> l.booking_column
                         ELSE audit.booking_via(l.source, l.through_schema, l.through_table,
                                                l.after ->> l.through_column) END
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
            WHERE k.field <> ALL (SELECT unnest(m.ignore_fields) FROM audit.entity_maps m
                                  WHERE m.source = audit.map_of(r.source))
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
