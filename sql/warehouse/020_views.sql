-- Views for the office and analysts: a booking's history, a customer's, the daily booking log,
-- and one user's activity. Bookings are the rows of a table named `bookings`; other audited
-- tables point at them through a `booking_id` column, bookings at customers via `customer_id`.

-- The one value of a single-column key, e.g. {"id": "42"} -> '42'.
CREATE OR REPLACE FUNCTION audit.key_value(row_key jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(row_key) = 'object'
                 AND (SELECT count(*) FROM jsonb_object_keys(row_key)) = 1
                THEN (SELECT value FROM jsonb_each_text(row_key))
           END
$$;

CREATE OR REPLACE VIEW audit.booking_history AS
SELECT CASE WHEN h.table_name = 'bookings' THEN audit.key_value(h.row_key) ELSE h.booking_ref END
           AS booking_id,
       h.*
FROM audit.field_history h
WHERE h.table_name = 'bookings' OR h.booking_ref IS NOT NULL;

CREATE OR REPLACE VIEW audit.booking_customers AS
SELECT DISTINCT audit.key_value(r.row_key) AS booking_id,
       coalesce(r.after ->> 'customer_id', r.before ->> 'customer_id') AS customer_id
FROM audit.row_changes r
WHERE r.table_name = 'bookings'
  AND coalesce(r.after ->> 'customer_id', r.before ->> 'customer_id') IS NOT NULL;

-- A customer's own record plus everything on every booking they ever had.
CREATE OR REPLACE VIEW audit.customer_history AS
SELECT bc.customer_id, b.*
FROM audit.booking_history b
JOIN audit.booking_customers bc USING (booking_id)
UNION ALL
SELECT audit.key_value(h.row_key) AS customer_id, NULL AS booking_id, h.*
FROM audit.field_history h
WHERE h.table_name = 'customers';

-- The "booking history log": one line per booking created, modified or deleted.
CREATE OR REPLACE VIEW audit.booking_log AS
SELECT r.committed_at,
       (r.committed_at AT TIME ZONE 'UTC')::date AS day,
       audit.key_value(r.row_key) AS booking_id,
       CASE r.action WHEN 'insert' THEN 'created' WHEN 'update' THEN 'modified'
                     WHEN 'existing' THEN 'existing at install' ELSE r.action END AS event,
       coalesce(r.actor, r.db_user || ' (db role' || coalesce(' via ' || r.application, '') || ')',
                CASE r.actor_origin WHEN 'baseline' THEN '(existing at install)' END)
           AS actor,
       r.actor_role,
       r.approval_ref,
       coalesce((SELECT string_agg(f.field, ', ' ORDER BY f.position)
                 FROM audit.field_changes f WHERE f.change_id = r.id), '') AS fields,
       r.txid,
       r.commit_lsn,
       r.sequence
FROM audit.row_changes r
WHERE r.table_name = 'bookings';

-- What one person did: matched on the application actor, or on the db role when none was set.
CREATE OR REPLACE VIEW audit.actor_activity AS
SELECT coalesce(r.actor, r.db_user) AS who,
       h.*
FROM audit.field_history h
JOIN audit.row_changes r ON r.id = h.change_id;
