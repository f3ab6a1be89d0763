-- Views for the office and analysts: a booking's history, a customer's, the daily booking log,
-- and one user's activity. Which tables hold bookings, customers and related rows comes from
-- each source's entity map (003_entity_map.sql); every view carries `source`, so two databases
-- with the same table names and keys never mix.

-- Every change of a booking and of its related rows (directly or through another table).
CREATE OR REPLACE VIEW audit.booking_history AS
SELECT b.booking_id, b.kind, b.label, h.*
FROM audit.change_bookings b
JOIN audit.field_history h ON h.change_id = b.change_id;

-- Which customer each booking named, in each of its versions.
CREATE OR REPLACE VIEW audit.booking_customers AS
SELECT DISTINCT c.source, c.row_id AS booking_id, x.customer_id
FROM audit.change_entities c
JOIN audit.row_changes r ON r.id = c.change_id
CROSS JOIN LATERAL (
    VALUES (r.before ->> c.customer_column), (r.after ->> c.customer_column)
) x(customer_id)
WHERE c.kind = 'booking' AND x.customer_id IS NOT NULL;

-- A customer's own record plus everything on every booking they ever had.
CREATE OR REPLACE VIEW audit.customer_history AS
SELECT bc.customer_id, b.*
FROM audit.booking_history b
JOIN audit.booking_customers bc ON bc.source = b.source AND bc.booking_id = b.booking_id
UNION ALL
SELECT c.row_id AS customer_id, NULL AS booking_id, c.kind, c.label, h.*
FROM audit.change_entities c
JOIN audit.field_history h ON h.change_id = c.change_id
WHERE c.kind = 'customer';

-- The "booking history log": one line per booking created, modified or deleted.
CREATE OR REPLACE VIEW audit.booking_log AS
SELECT r.source,
       r.committed_at,
       (r.committed_at AT TIME ZONE 'UTC')::date AS day,
       c.row_id AS booking_id,
       CASE r.action WHEN 'insert' THEN 'created' WHEN 'update' THEN 'modified'
                     WHEN 'existing' THEN 'existing at install' ELSE r.action END AS event,
       audit.actor_label(r.actor, r.db_user, r.application) AS actor,
       r.actor_role,
       r.approval_ref,
       coalesce((SELECT string_agg(f.field, ', ' ORDER BY f.position)
                 FROM audit.field_changes f WHERE f.change_id = r.id), '') AS fields,
       r.txid,
       r.commit_lsn,
       r.sequence
FROM audit.change_entities c
JOIN audit.row_changes r ON r.id = c.change_id
WHERE c.kind = 'booking';

-- What one person did: matched on the application actor, or on the db role when none was set.
CREATE OR REPLACE VIEW audit.actor_activity AS
SELECT audit.actor_identity(r.actor, r.db_user) AS who,
       h.*
FROM audit.field_history h
JOIN audit.row_changes r ON r.id = h.change_id;
