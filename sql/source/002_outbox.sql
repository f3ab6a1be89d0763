-- bookaudit source install --mode trigger: row triggers write an outbox in the same transaction,
-- and `bookaudit capture --mode trigger` relays it to Kafka in commit order. No logical decoding.
-- {hstore} is the schema of the hstore extension, filled in by the installer.

-- One row per row change. hstore(record) renders each value with its type's output function,
-- as pgoutput does; the relay re-renders it in a session like the walsender's (see relay.py).
-- The actor context is written once per transaction and again when it changes, never once per
-- row: the first change it covers carries it in `context`, and every change names that change
-- in `context_seq`, the way logical decoding's context message precedes the rows it covers.
CREATE TABLE IF NOT EXISTS bookaudit.outbox (
    txid        bigint   NOT NULL,  -- pg_current_xact_id(): epoch-qualified, never wraps
    seq         integer  NOT NULL,  -- position among the transaction's row changes, from 0
    context_seq integer  NOT NULL,  -- seq of the change that carries this change's context
    schema_name text     NOT NULL,
    table_name  text     NOT NULL,
    op          "char"   NOT NULL,  -- c u d t, as in the envelope
    old_row     {hstore}.hstore,
    new_row     {hstore}.hstore,
    context     jsonb,              -- set where a context takes effect, NULL elsewhere
    context_mark uuid,              -- md5 of the settings the context was built from
    PRIMARY KEY (txid, seq)
);
-- Installs made before the mark column existed.
ALTER TABLE bookaudit.outbox ADD COLUMN IF NOT EXISTS context_mark uuid;

-- The table's columns as this row was written (bookaudit.outbox_shapes); NULL in rows written
-- before an install that had shapes, which the relay reads through the table as it is now.
ALTER TABLE bookaudit.outbox ADD COLUMN IF NOT EXISTS shape integer;

-- A table's stored columns, their types and its primary key, as one statement saw them. The relay
-- reads a queued row through its own shape, so a column added, dropped, renamed or retyped after
-- the row was written (with the relay running or stopped) changes nothing in what it says.
-- Not unique: two transactions may record the same shape at once, and either copy serves.
CREATE TABLE IF NOT EXISTS bookaudit.outbox_shapes (
    shape    serial  PRIMARY KEY,
    relid    oid     NOT NULL,
    columns  text[]  NOT NULL,
    types    oid[]   NOT NULL,
    typmods  integer[] NOT NULL,
    key      text[]  NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_shapes_relid ON bookaudit.outbox_shapes (relid);

-- One row per committed audited transaction, numbered in commit order (see register_commit).
CREATE TABLE IF NOT EXISTS bookaudit.outbox_commits (
    commit_seq   bigint      PRIMARY KEY,
    txid         bigint      NOT NULL UNIQUE,
    changes      integer     NOT NULL,
    committed_at timestamptz NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS bookaudit.commit_seq;
-- commit_seq is the event identity in place of the commit LSN, so a reinstall must never reuse a
-- number: start at the current WAL position, which has moved on by more than one byte for
-- every commit numbered since any earlier install.
SELECT setval('bookaudit.commit_seq',
              greatest((SELECT last_value FROM bookaudit.commit_seq),
                       (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint));

-- The shape of a table now (generated columns left out, as pgoutput leaves them out): the one
-- recorded already, else a new one. Run once per statement that writes rows (see outbox_row).
CREATE OR REPLACE FUNCTION bookaudit._shape(rel oid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_columns text[];
    v_types oid[];
    v_typmods integer[];
    v_key text[];
    v_shape integer;
BEGIN
    SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{{}}'),
           coalesce(array_agg(atttypid ORDER BY attnum), '{{}}'),
           coalesce(array_agg(atttypmod ORDER BY attnum), '{{}}')
      INTO v_columns, v_types, v_typmods
      FROM pg_attribute
     WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    SELECT coalesce(array_agg(a.attname::text ORDER BY k.n), '{{}}') INTO v_key
      FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary;
    SELECT s.shape INTO v_shape FROM bookaudit.outbox_shapes s
     WHERE s.relid = rel AND s.columns = v_columns AND s.types = v_types
       AND s.typmods = v_typmods AND s.key = v_key
     LIMIT 1;
    IF v_shape IS NULL THEN
        INSERT INTO bookaudit.outbox_shapes (relid, columns, types, typmods, key)
        VALUES (rel, v_columns, v_types, v_typmods, v_key) RETURNING shape INTO v_shape;
    END IF;
    RETURN v_shape;
END
$$;

-- BEFORE ... FOR EACH STATEMENT on every audited table. A statement may follow an ALTER TABLE in
-- the same transaction: forget the shape noted so far, and the statement's first row looks it up
-- again. (The setting is only a cache: outbox_row trusts it only where it matches the shape the
-- outbox itself holds for the table, so presetting it changes nothing.) On a partition, the
-- argument is its partitioned table's oid, whose shape its rows are recorded in.
CREATE OR REPLACE FUNCTION bookaudit.record_context() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- An assignment, not PERFORM: PERFORM runs a whole query every time.
    cleared text := set_config('bookaudit._shape_' || CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0]
                                                           ELSE TG_RELID::text END, '', true);
BEGIN
    RETURN NULL;
END
$$;

-- BEFORE and AFTER UPDATE ... FOR EACH STATEMENT on a partitioned table: while its UPDATE runs,
-- a row's delete from one partition and insert into another are the halves of one move (the
-- AFTER ROW triggers fire before the AFTER STATEMENT one). The mark is signed for this
-- transaction and table, so the application cannot preset it to merge a delete and an insert of
-- its own.
CREATE OR REPLACE FUNCTION bookaudit.note_moves() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- An assignment, not PERFORM (which runs a whole query); _mac is inlined (001_context.sql).
    mark text := set_config('bookaudit._moving_' || TG_RELID,
                            CASE WHEN TG_WHEN = 'BEFORE' THEN bookaudit._mac(convert_to(
                                'moving:' || bookaudit._xid() || ':' || TG_RELID, 'UTF8'))
                            ELSE '' END, true);
BEGIN
    RETURN NULL;
END
$$;

-- Whether an UPDATE of partitioned table rel is running now (see note_moves).
CREATE OR REPLACE FUNCTION bookaudit._moving(rel oid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mark text := current_setting('bookaudit._moving_' || rel, true);
BEGIN
    RETURN coalesce(mark, '') <> ''
        AND mark = bookaudit._mac(convert_to('moving:' || bookaudit._xid() || ':' || rel, 'UTF8'));
END
$$;

-- A row's text must not depend on the writer's session: DateStyle 'SQL, DMY' would be misread
-- later and extra_float_digits = 0 rounds floats. The relay reads this text back through the
-- column types and renders it as pgoutput does, so any unambiguous, exact form will do; sessions
-- already in one (the defaults) skip the cost of switching settings for the call.
CREATE OR REPLACE FUNCTION bookaudit._exact_text(r anyelement) RETURNS {hstore}.hstore
LANGUAGE sql STABLE
SET datestyle = 'ISO, MDY' SET intervalstyle = 'postgres' SET extra_float_digits = 1
AS $$ SELECT {hstore}.hstore(r) $$;

-- AFTER ... FOR EACH ROW (and AFTER TRUNCATE FOR EACH STATEMENT): one outbox row per change.
-- SECURITY DEFINER: the application role has no privilege on the outbox, so it can neither write
-- a change nor read one. The transaction's state (next seq, the context in effect) is read back
-- from the outbox itself, never kept in settings: a setting can be preset by anyone, while these
-- rows can only be written here and roll back with a savepoint exactly like the changes.
-- session_user and inet_client_addr() are read here, inside the trigger, from the server.
-- On a partitioned table the trigger is cloned to every partition, present and future, with the
-- partitioned table's oid as argument: a partition's row is recorded as that table's, in its
-- shape, and a row moving between partitions (a delete and an insert, to PostgreSQL) as the one
-- update it is.
CREATE OR REPLACE FUNCTION bookaudit.outbox_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tx bigint := pg_current_xact_id()::text::bigint;
    mark uuid := md5(bookaudit._context_mark())::uuid;
    at integer;
    ctx integer;
    last_mark uuid;
    last_table text;
    last_shape integer;
    last_open boolean;
    rel oid := CASE WHEN TG_NARGS > 0 THEN TG_ARGV[0]::oid ELSE TG_RELID END;
    rel_schema text := TG_TABLE_SCHEMA;
    rel_name text := TG_TABLE_NAME;
    moving boolean := false;
    shape integer := nullif(current_setting('bookaudit._shape_' || rel, true), '')::integer;
    carried jsonb;
    plain boolean := current_setting('DateStyle') LIKE 'ISO%'
                     AND current_setting('IntervalStyle') = 'postgres'
                     AND current_setting('extra_float_digits')::integer >= 1;
    old_row {hstore}.hstore;
    new_row {hstore}.hstore;
BEGIN
    IF TG_NARGS > 0 THEN
        SELECT n.nspname, c.relname INTO rel_schema, rel_name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
        moving := TG_OP IN ('DELETE', 'INSERT') AND bookaudit._moving(rel);
    END IF;
    SELECT o.seq + 1, o.context_seq, o.context_mark, o.schema_name || '.' || o.table_name, o.shape,
           o.op = 'u' AND o.new_row IS NULL
      INTO at, ctx, last_mark, last_table, last_shape, last_open
      FROM bookaudit.outbox o WHERE o.txid = tx ORDER BY o.seq DESC LIMIT 1;
    at := coalesce(at, 0);
    -- The shape noted for this statement serves only while it is the one the last row of this
    -- table holds; otherwise (first row, another table in between, or a preset setting) it is
    -- looked up again.
    IF TG_LEVEL = 'ROW' AND (shape IS NULL OR last_shape IS DISTINCT FROM shape
                             OR last_table IS DISTINCT FROM rel_schema || '.' || rel_name)
    THEN
        shape := bookaudit._shape(rel);
        PERFORM set_config('bookaudit._shape_' || rel, shape::text, true);
    ELSIF TG_LEVEL = 'STATEMENT' THEN
        shape := NULL;
    END IF;
    IF ctx IS NULL OR last_mark IS DISTINCT FROM mark THEN
        -- The first change of the transaction, or the context moved since the last one: this
        -- change carries the context, and the changes after it point here.
        carried := bookaudit.current_context();
        ctx := at;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := CASE WHEN plain THEN {hstore}.hstore(OLD) ELSE bookaudit._exact_text(OLD) END;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := CASE WHEN plain THEN {hstore}.hstore(NEW) ELSE bookaudit._exact_text(NEW) END;
    END IF;
    IF moving AND TG_OP = 'INSERT' AND last_open
       AND last_table = rel_schema || '.' || rel_name AND last_shape IS NOT DISTINCT FROM shape THEN
        -- The second half of a move: the update its first half (the row before) began.
        UPDATE bookaudit.outbox o
           SET new_row = CASE WHEN plain THEN {hstore}.hstore(NEW)
                              ELSE bookaudit._exact_text(NEW) END
         WHERE o.txid = tx AND o.seq = at - 1;
        RETURN NULL;
    END IF;
    INSERT INTO bookaudit.outbox (txid, seq, context_seq, schema_name, table_name, op, old_row,
                                  new_row, context, context_mark, shape)
    VALUES (
        tx, at, ctx, rel_schema, rel_name,
        -- A delete while the table's UPDATE runs is a move's first half: an update whose new row
        -- the insert fills in (one that never comes leaves a delete, which the relay reads so).
        CASE WHEN moving AND TG_OP = 'DELETE' THEN 'u'
             ELSE CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' WHEN 'DELETE' THEN 'd'
                             ELSE 't' END END,
        old_row, new_row, carried, mark, shape
    );
    RETURN NULL;
END
$$;

-- Fired once per transaction at COMMIT (a deferred constraint trigger on its first change).
-- The advisory lock is held until the commit has completed and become visible, so transactions
-- take commit_seq numbers strictly in commit order: when the relay sees number N, every smaller
-- number that will ever commit is already visible, and it never has to wait on a gap.
CREATE OR REPLACE FUNCTION bookaudit.register_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tx bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bookaudit.outbox_commits c WHERE c.txid = tx) THEN
        PERFORM pg_advisory_xact_lock(1651204468, 1);  -- 'bkat': bookaudit's commit order
        INSERT INTO bookaudit.outbox_commits (commit_seq, txid, changes, committed_at)
        VALUES (nextval('bookaudit.commit_seq'), tx,
                (SELECT max(o.seq) + 1 FROM bookaudit.outbox o WHERE o.txid = tx),
                clock_timestamp());
    END IF;
    RETURN NULL;
END
$$;

-- WHEN keeps it to one queued event per transaction, however many rows it changes (a first
-- change rolled back with a savepoint takes its event along, and the next change is seq 0).
DROP TRIGGER IF EXISTS bookaudit_commit_order ON bookaudit.outbox;
CREATE CONSTRAINT TRIGGER bookaudit_commit_order AFTER INSERT ON bookaudit.outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.seq = 0)
    EXECUTE FUNCTION bookaudit.register_commit();

-- The settings-based bookkeeping of earlier installs, which an application could preset.
DROP FUNCTION IF EXISTS bookaudit._note_context();

-- Every partition of the partitioned tables that carry the outbox trigger, partitions created or
-- attached since included: the statement trigger that an application writing the partition
-- directly fires (a statement trigger of the partitioned table does not fire then, nor is it
-- cloned; the outbox trigger is). Returns one line per change made; install and the relay run it.
-- The argument only matches logical mode's (005_partitions.sql).
CREATE OR REPLACE FUNCTION bookaudit.adopt_partitions(publication text) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root oid;
    part regclass;
BEGIN
    FOR root IN
        SELECT c.oid FROM pg_class c
         WHERE c.relkind = 'p'
           AND EXISTS (SELECT 1 FROM pg_trigger t
                        WHERE t.tgrelid = c.oid AND t.tgname = '0_bookaudit_outbox')
         ORDER BY c.oid
    LOOP
        FOR part IN SELECT t.relid FROM pg_partition_tree(root) t WHERE t.relid <> root
                     ORDER BY t.level, t.relid::text
        LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger t
                                   WHERE t.tgrelid = part AND t.tgname = 'bookaudit_context');
            BEGIN
                EXECUTE format(
                    'CREATE TRIGGER bookaudit_context BEFORE INSERT OR UPDATE OR DELETE OR '
                    'TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION '
                    'bookaudit.record_context(%L)', part, root::text);
                RETURN NEXT format('partition %s of %s: context trigger', part, root::regclass);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'partition % of % is not adopted: role % does not own it; as its '
                                'owner run `bookaudit source install --mode trigger` again',
                                part, root::regclass, current_user
                      USING ERRCODE = 'insufficient_privilege';
            END;
        END LOOP;
    END LOOP;
END
$$;

REVOKE ALL ON bookaudit.outbox, bookaudit.outbox_commits, bookaudit.outbox_shapes FROM PUBLIC;
REVOKE ALL ON SEQUENCE bookaudit.commit_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION bookaudit._exact_text(anyelement), bookaudit.outbox_row(),
    bookaudit.register_commit(), bookaudit._shape(oid), bookaudit.record_context(),
    bookaudit.note_moves(), bookaudit._moving(oid), bookaudit.adopt_partitions(text) FROM PUBLIC;
