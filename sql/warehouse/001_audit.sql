-- bookaudit warehouse: append-only audit entries, one row per row change and one per changed field.
CREATE SCHEMA IF NOT EXISTS audit;

-- Who acted, as people read it: the application user, else the database role and its program.
-- The one SQL definition of bookaudit.model.actor_label; a contract test keeps the two equal.
CREATE OR REPLACE FUNCTION audit.actor_label(actor text, db_user text, application text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(actor, ''),
                    coalesce(nullif(db_user, ''), 'unknown') || ' (db role'
                    || coalesce(' via ' || nullif(application, ''), '') || ')')
$$;

-- Who a change counts as when grouped by person: bookaudit.model.actor_identity.
CREATE OR REPLACE FUNCTION audit.actor_identity(actor text, db_user text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(actor, ''), nullif(db_user, ''), 'unknown')
$$;

CREATE TABLE IF NOT EXISTS audit.row_changes (
    id              bigserial PRIMARY KEY,
    source          text        NOT NULL,
    commit_lsn      pg_lsn      NOT NULL,
    sequence        bigint      NOT NULL,
    lsn             pg_lsn      NOT NULL,
    txid            bigint      NOT NULL,
    committed_at    timestamptz NOT NULL,
    schema_name     text        NOT NULL,
    table_name      text        NOT NULL,
    action          text        NOT NULL,
    row_key         jsonb,
    before          jsonb,
    after           jsonb,
    actor           text,
    actor_role      text,
    reason          text,
    approval_ref    text,
    request_id      text,
    application     text,
    db_user         text,
    client_addr     text,
    actor_origin    text        NOT NULL,
    capture_mode    text        NOT NULL DEFAULT 'logical',
    kafka_topic     text        NOT NULL,
    kafka_partition int         NOT NULL,
    kafka_offset    bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The idempotency key: a replayed or duplicated event lands on this and is skipped.
    UNIQUE (source, commit_lsn, sequence)
);

-- 'existing': a row as it stood when the audit started (the install's baseline, Debezium op r).
-- Replaced rather than declared inline so that `warehouse init` upgrades an older warehouse;
-- NOT VALID because the rows already there cannot have changed (the table is append-only).
ALTER TABLE audit.row_changes DROP CONSTRAINT IF EXISTS row_changes_action_check;
ALTER TABLE audit.row_changes ADD CONSTRAINT row_changes_action_check
    CHECK (action IN ('insert', 'update', 'delete', 'truncate', 'existing')) NOT VALID;

-- No statistics for the row images: no query compares a whole before or after (lookups go by id,
-- row key, time and actor), and sampling them cost 43 % of every ANALYZE of row_changes (450 →
-- 255 ms at 70k rows), a burst that autovacuum repeats while a warehouse grows, beside the writer.
ALTER TABLE audit.row_changes ALTER COLUMN before SET STATISTICS 0,
                              ALTER COLUMN after SET STATISTICS 0;

CREATE INDEX IF NOT EXISTS row_changes_committed_at ON audit.row_changes (committed_at);
CREATE INDEX IF NOT EXISTS row_changes_actor ON audit.row_changes (actor, committed_at);

CREATE TABLE IF NOT EXISTS audit.field_changes (
    change_id  bigint NOT NULL,
    field      text   NOT NULL,
    position   int    NOT NULL,
    old_value  text,
    new_value  text,
    PRIMARY KEY (change_id, field)
);
-- No foreign key to row_changes: its check ran once per field row (and locked the audit row),
-- about a third of the warehouse's work per change in a backlog. The writer stores a row and its
-- fields in one transaction; each row's chain leaf covers its field rows, and `warehouse verify`
-- names field rows that belong to no chained row, which the key never caught from an owner in
-- replica mode either.
ALTER TABLE audit.field_changes DROP CONSTRAINT IF EXISTS field_changes_change_id_fkey;

-- Poison messages land here with their raw bytes, so nothing is lost and the writer moves on.
CREATE TABLE IF NOT EXISTS audit.dead_letters (
    id              bigserial PRIMARY KEY,
    kafka_topic     text        NOT NULL,
    kafka_partition int         NOT NULL,
    kafka_offset    bigint      NOT NULL,
    key             bytea,
    value           bytea,
    error           text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kafka_topic, kafka_partition, kafka_offset)
);

-- Append-only: UPDATE, DELETE and TRUNCATE are refused for every role, owner included.
CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Every later file makes its tables append-only through this one function.
CREATE OR REPLACE FUNCTION audit.make_append_only(tables text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS append_only ON audit.%I', t);
        EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.%I '
                       'FOR EACH ROW EXECUTE FUNCTION audit.refuse_change()', t);
        EXECUTE format('DROP TRIGGER IF EXISTS append_only_truncate ON audit.%I', t);
        EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', t);
    END LOOP;
END
$$;

SELECT audit.make_append_only(ARRAY['row_changes', 'field_changes', 'dead_letters']);

-- One row per changed field, with who and when: what analysts and `bookaudit history` read.
-- A warehouse from before the entity map has a booking_ref column here, which CREATE OR REPLACE
-- cannot drop: the view goes, and the later files of this same init create its dependants again.
DO $$
BEGIN
    IF EXISTS (SELECT FROM information_schema.columns WHERE table_schema = 'audit'
               AND table_name = 'field_history' AND column_name = 'booking_ref') THEN
        DROP VIEW audit.field_history CASCADE;
        DROP VIEW IF EXISTS audit.booking_log, audit.booking_customers CASCADE;
    END IF;
END
$$;
CREATE OR REPLACE VIEW audit.field_history AS
SELECT r.id AS change_id,
       r.source,
       r.committed_at,
       r.txid,
       r.commit_lsn,
       r.sequence,
       r.schema_name,
       r.table_name,
       r.action,
       r.row_key,
       -- With no application actor, the database role and client application still attribute it.
       audit.actor_label(r.actor, r.db_user, r.application) AS actor,
       r.actor_role,
       r.actor_origin,
       r.reason,
       r.approval_ref,
       r.application,
       r.db_user,
       r.client_addr,
       f.field,
       f.position,
       f.old_value,
       f.new_value
FROM audit.row_changes r
LEFT JOIN audit.field_changes f ON f.change_id = r.id;
