-- bookaudit warehouse: the entity map of each source (which tables hold bookings, customers and
-- related rows, and how each reaches its booking), written by `warehouse init` and `map apply`.
-- The views read it, so a renamed schema needs a new map, never new SQL. Source '*' holds the
-- map of every source that has none of its own (the sample schema's, by default).

CREATE TABLE IF NOT EXISTS audit.entity_maps (
    source              text        PRIMARY KEY,
    origin              text        NOT NULL,
    ignore_fields       text[]      NOT NULL DEFAULT '{}',
    cancelled_statuses  text[]      NOT NULL DEFAULT '{}',
    applied_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per mapped table. kind is 'booking', 'customer' or a related noun ('invoice', ...).
-- A related row names its booking in booking_column, or the key of its through_* table in
-- through_column; key_column is the table's (one-column) primary key.
CREATE TABLE IF NOT EXISTS audit.entity_tables (
    source           text NOT NULL REFERENCES audit.entity_maps (source) ON DELETE CASCADE,
    schema_name      text NOT NULL,
    table_name       text NOT NULL,
    kind             text NOT NULL,
    label            text NOT NULL,
    key_column       text,
    booking_column   text,
    through_schema   text,
    through_table    text,
    through_column   text,
    customer_column  text,
    sent_column      text,
    PRIMARY KEY (source, schema_name, table_name),
    CHECK ((kind IN ('booking', 'customer')) = (booking_column IS NULL AND through_table IS NULL))
);

-- Which columns are a table's schedule, price, status and assignment.
CREATE TABLE IF NOT EXISTS audit.entity_fields (
    source       text NOT NULL,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    field        text NOT NULL,
    role         text NOT NULL CHECK (role IN ('schedule', 'price', 'status', 'assignment')),
    PRIMARY KEY (source, schema_name, table_name, field, role),
    FOREIGN KEY (source, schema_name, table_name)
        REFERENCES audit.entity_tables (source, schema_name, table_name) ON DELETE CASCADE
);

-- The one value of a single-column key, e.g. {"id": "42"} -> '42'.
-- Path expressions rather than subqueries: every view calls this per row, and this form is about
-- ten times cheaper (4 µs against 43 µs a row); the results are the same, so the index on it holds.
-- With no subquery the planner also inlines it, and matches it to the index below.
CREATE OR REPLACE FUNCTION audit.key_value(row_key jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(row_key) = 'object'
                 AND jsonb_array_length(jsonb_path_query_array(row_key, '$.*')) = 1
                THEN jsonb_path_query_first(row_key, '$.*') #>> '{}'
           END
$$;

-- The booking or customer a row is, by the map's key column: on a partitioned table the primary
-- key also holds the partition key ({"id": "42", "scheduled_start": "..."}), and the row stays
-- booking 42 when it moves to another partition. Without a key column, the one-column row key.
CREATE OR REPLACE FUNCTION audit.entity_key(key_column text, row_key jsonb, before jsonb,
                                            after jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT audit.key_value(row_key) WHERE key_column IS NULL
    UNION
    SELECT v FROM (VALUES (before ->> key_column), (after ->> key_column)) k(v)
    WHERE key_column IS NOT NULL AND v IS NOT NULL
$$;

-- A row's history is looked up by source, table and key, never by table name alone.
DROP INDEX IF EXISTS audit.row_changes_table_key;
DROP INDEX IF EXISTS audit.row_changes_booking_ref;
CREATE INDEX IF NOT EXISTS row_changes_row
    ON audit.row_changes (source, schema_name, table_name, audit.key_value(row_key), id);

-- The map a source is read with: its own, else the default ('*').
CREATE OR REPLACE FUNCTION audit.map_of(source text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT m.source FROM audit.entity_maps m WHERE m.source = map_of.source), '*')
$$;

-- The sources that feed this warehouse, read off the unique index one value at a time (and those
-- that only raised alerts so far).
CREATE OR REPLACE FUNCTION audit.sources() RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE s(source) AS (
        (SELECT r.source FROM audit.row_changes r ORDER BY r.source LIMIT 1)
        UNION ALL
        SELECT (SELECT r.source FROM audit.row_changes r WHERE r.source > s.source
                ORDER BY r.source LIMIT 1)
        FROM s WHERE s.source IS NOT NULL
    )
    SELECT source FROM s WHERE source IS NOT NULL
    UNION
    SELECT a.source FROM audit.alerts a
    ORDER BY 1
$$;

-- The booking a row of (schema, table) with key `key` belongs to, following `through` links
-- via the latest audit entry of each parent row (a payment → its invoice → the booking).
CREATE OR REPLACE FUNCTION audit.booking_via(
    p_source text, p_schema text, p_table text, p_key text
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    map text := audit.map_of(p_source);
    e audit.entity_tables;
    parent jsonb;
    k text := p_key;
    sch text := p_schema;
    tbl text := p_table;
BEGIN
    -- The map is checked for cycles when applied; the bound only guards a hand-edited table.
    FOR depth IN 1..8 LOOP
        IF k IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT * INTO e FROM audit.entity_tables t
        WHERE t.source = map AND t.schema_name = sch AND t.table_name = tbl;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
        IF e.kind = 'booking' THEN
            RETURN k;
        END IF;
        SELECT coalesce(r.after, r.before) INTO parent FROM audit.row_changes r
        WHERE r.source = p_source AND r.schema_name = sch AND r.table_name = tbl
          AND audit.key_value(r.row_key) = k
        ORDER BY r.id DESC LIMIT 1;
        IF parent IS NULL THEN
            RETURN NULL;
        END IF;
        IF e.booking_column IS NOT NULL THEN
            RETURN parent ->> e.booking_column;
        END IF;
        k := parent ->> e.through_column;
        sch := e.through_schema;
        tbl := e.through_table;
    END LOOP;
    RETURN NULL;
END
$$;

-- Which booking (and, for a booking row, which customer) each row change belongs to, kept as the
-- audit rows arrive so that one booking's history is an index lookup, not a pass over every
-- row. Derived from row_changes and the map: `map apply` rebuilds a source's links, so these
-- tables are not append-only (the evidence is row_changes and its chain), and they hold no
-- foreign key to row_changes, whose rows a key check would lock once per link.
CREATE TABLE IF NOT EXISTS audit.booking_links (
    change_id   bigint NOT NULL,
    source      text   NOT NULL,
    booking_id  text   NOT NULL,
    PRIMARY KEY (change_id, booking_id)
);
-- By booking first: views filter on the booking, and on the source through another column.
CREATE INDEX IF NOT EXISTS booking_links_booking ON audit.booking_links (booking_id, source);

CREATE TABLE IF NOT EXISTS audit.customer_links (
    change_id    bigint NOT NULL,
    source       text   NOT NULL,
    customer_id  text   NOT NULL,
    PRIMARY KEY (change_id, customer_id)
);
CREATE INDEX IF NOT EXISTS customer_links_customer ON audit.customer_links (customer_id, source);

-- A row of a table mapped `through` another names its parent's key: (parent table, key).
CREATE TABLE IF NOT EXISTS audit.row_refs (
    change_id      bigint NOT NULL,
    source         text   NOT NULL,
    parent_schema  text   NOT NULL,
    parent_table   text   NOT NULL,
    parent_key     text   NOT NULL,
    PRIMARY KEY (change_id, parent_key)
);
CREATE INDEX IF NOT EXISTS row_refs_parent
    ON audit.row_refs (source, parent_schema, parent_table, parent_key);

-- Every row change of a mapped table, with the map it is read with (its source's own, or '*').
CREATE TABLE IF NOT EXISTS audit.mapped_changes (
    change_id  bigint PRIMARY KEY,
    map        text   NOT NULL
);

-- Link the given row changes, and whatever waited for them: a payment that arrives before its
-- invoice (they travel on different topics) is linked when the invoice arrives. A row belongs
-- to every booking that any version of it (or of its parent) named, so a move shows in both.
-- Planned afresh on every call: PL/pgSQL caches a statement's plan for its session, and a writer's
-- session lives for days. A plan cached while row_changes was empty (a new warehouse) scanned
-- the whole table for `id = ANY (ids)` on every batch, until autovacuum's first ANALYZE: 1.5 s
-- a batch at 44k rows, and the writer 8-10 s behind at 2,500/s. Planning costs well under a millisecond
-- a batch.
CREATE OR REPLACE FUNCTION audit.link_changes(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    frontier bigint[] := ids;
    found bigint[];
    maps jsonb;  -- each source's map, looked up once per call rather than once per row
BEGIN
    -- `id = ANY` planned with the batch's ids (see above) is an index scan; a join with unnest() was hashed
    -- over all of row_changes while it was small. Only sources with a mapped table among the
    -- given rows count: a batch of unmapped tables (a backlog of one, say) stops here, before
    -- its rows' jsonb is read. A `through` table is always mapped itself (entity_map.py checks),
    -- so no row of an unmapped table is the parent that waiting rows are linked by.
    SELECT jsonb_object_agg(m.source, m.map) INTO maps
    FROM (
        SELECT DISTINCT t.source, t.map
        FROM (SELECT s.source, s.schema_name, s.table_name, audit.map_of(s.source) AS map
              FROM (SELECT DISTINCT r.source, r.schema_name, r.table_name
                    FROM audit.row_changes r WHERE r.id = ANY (ids)) s) t
        WHERE EXISTS (SELECT FROM audit.entity_tables e
                      WHERE e.source = t.map AND e.schema_name = t.schema_name
                        AND e.table_name = t.table_name)
    ) m;
    IF maps IS NULL THEN
        RETURN;
    END IF;

    -- The CTEs are fenced (MATERIALIZED) on purpose: the planner cannot guess how many rows a
    -- map name taken from a jsonb matches, and a wrong guess once scanned row_changes per id.
    WITH rows AS MATERIALIZED (
        SELECT r.id, r.source, r.schema_name, r.table_name, r.row_key, r.before, r.after,
               maps ->> r.source AS map
        FROM audit.row_changes r WHERE r.id = ANY (ids)
    ), batch AS MATERIALIZED (
        SELECT b.*, e.kind, e.key_column, e.booking_column, e.customer_column, e.through_schema,
               e.through_table, e.through_column
        FROM rows b
        JOIN audit.entity_tables e
          ON e.source = b.map AND e.schema_name = b.schema_name AND e.table_name = b.table_name
    ), mapped AS (
        INSERT INTO audit.mapped_changes (change_id, map)
        SELECT b.id, b.map FROM batch b
        ON CONFLICT DO NOTHING
    ), customers AS (
        INSERT INTO audit.customer_links (change_id, source, customer_id)
        SELECT DISTINCT b.id, b.source, x.v
        FROM batch b
        CROSS JOIN LATERAL (
            SELECT audit.entity_key(b.key_column, b.row_key, b.before, b.after)
            WHERE b.kind = 'customer'
            UNION ALL
            SELECT y.v
            FROM (VALUES (b.before ->> b.customer_column), (b.after ->> b.customer_column)) y(v)
            WHERE b.kind = 'booking'
        ) x(v)
        WHERE x.v IS NOT NULL
        ON CONFLICT DO NOTHING
    ), refs AS (
        INSERT INTO audit.row_refs (change_id, source, parent_schema, parent_table, parent_key)
        SELECT DISTINCT b.id, b.source, b.through_schema, b.through_table, x.v
        FROM batch b
        CROSS JOIN LATERAL (
            VALUES (b.before ->> b.through_column), (b.after ->> b.through_column)
        ) x(v)
        WHERE b.through_table IS NOT NULL AND x.v IS NOT NULL
        ON CONFLICT DO NOTHING
    )
    INSERT INTO audit.booking_links (change_id, source, booking_id)
    SELECT DISTINCT b.id, b.source, x.v
    FROM batch b
    CROSS JOIN LATERAL (
        SELECT audit.entity_key(b.key_column, b.row_key, b.before, b.after)
        WHERE b.kind = 'booking'
        UNION ALL
        SELECT y.v
        FROM (VALUES (b.before ->> b.booking_column), (b.after ->> b.booking_column)) y(v)
        WHERE b.booking_column IS NOT NULL
    ) x(v)
    WHERE x.v IS NOT NULL
    ON CONFLICT DO NOTHING;

    -- Through links, a level at a time (the map is checked for cycles; the bound only guards a
    -- hand-edited table): the frontier's children get its links, and its own rows that go
    -- through a parent get the parent's. Rows of one statement's CTEs cannot see each other,
    -- hence the row_refs of this batch were written by the statement above.
    IF NOT EXISTS (SELECT FROM audit.entity_tables t
                   WHERE t.through_table IS NOT NULL
                     AND t.source IN (SELECT jsonb_each_text.value FROM jsonb_each_text(maps))) THEN
        RETURN;  -- no map of these sources goes through another table
    END IF;
    FOR depth IN 1..8 LOOP
        WITH front AS MATERIALIZED (
            SELECT r.id, r.source, r.schema_name, r.table_name, audit.key_value(r.row_key) AS k
            FROM audit.row_changes r WHERE r.id = ANY (frontier)
        ), parents AS MATERIALIZED (
            -- the frontier's rows that name a parent, and every version of that parent
            SELECT ref.change_id, ref.source, p.id AS parent_id
            FROM front f
            JOIN audit.row_refs ref ON ref.change_id = f.id
            JOIN audit.row_changes p
              ON p.source = ref.source AND p.schema_name = ref.parent_schema
             AND p.table_name = ref.parent_table AND audit.key_value(p.row_key) = ref.parent_key
        ), children AS MATERIALIZED (
            -- the rows that name one of the frontier's rows as their parent
            SELECT ref.change_id, ref.source, f.id AS parent_id
            FROM front f
            JOIN audit.row_refs ref
              ON ref.source = f.source AND ref.parent_schema = f.schema_name
             AND ref.parent_table = f.table_name AND ref.parent_key = f.k
        ), linked AS (
            INSERT INTO audit.booking_links (change_id, source, booking_id)
            SELECT DISTINCT x.change_id, x.source, pl.booking_id
            FROM (SELECT * FROM parents UNION ALL SELECT * FROM children) x
            JOIN audit.booking_links pl ON pl.change_id = x.parent_id
            ON CONFLICT DO NOTHING
            RETURNING change_id
        )
        SELECT array_agg(DISTINCT change_id) INTO found FROM linked;
        EXIT WHEN found IS NULL;
        frontier := found;
    END LOOP;
END
$$;

-- Rebuild one source's links after its map changed, a slice of ids at a time.
CREATE OR REPLACE FUNCTION audit.relink(p_source text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last_id bigint := 0;
    slice bigint[];
    total bigint := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('bookaudit.audit.chain'));
    DELETE FROM audit.mapped_changes mc USING audit.row_changes r
    WHERE r.id = mc.change_id AND r.source = p_source;
    DELETE FROM audit.booking_links WHERE source = p_source;
    DELETE FROM audit.customer_links WHERE source = p_source;
    DELETE FROM audit.row_refs WHERE source = p_source;
    LOOP
        SELECT array_agg(id ORDER BY id) INTO slice FROM (
            SELECT r.id FROM audit.row_changes r
            WHERE r.source = p_source AND r.id > last_id ORDER BY r.id LIMIT 20000) s;
        EXIT WHEN slice IS NULL;
        PERFORM audit.link_changes(slice);
        last_id := slice[cardinality(slice)];
        total := total + cardinality(slice);
    END LOOP;
    RETURN total;
END
$$;

-- Every row change of a mapped table with its entity (kind, label, key) in its source's map.
CREATE OR REPLACE VIEW audit.change_entities AS
SELECT r.id AS change_id,
       r.source,
       r.schema_name,
       r.table_name,
       e.kind,
       e.label,
       audit.key_value(r.row_key) AS row_id,
       e.key_column,
       e.booking_column,
       e.through_schema,
       e.through_table,
       e.through_column,
       e.customer_column,
       e.sent_column,
       mc.map
FROM audit.mapped_changes mc
JOIN audit.row_changes r ON r.id = mc.change_id
JOIN audit.entity_tables e
  ON e.source = mc.map AND e.schema_name = r.schema_name AND e.table_name = r.table_name;

-- Which booking each row change belongs to: one row per (change, booking).
CREATE OR REPLACE VIEW audit.change_bookings AS
SELECT l.change_id, l.source, c.schema_name, c.table_name, c.kind, c.label, l.booking_id
FROM audit.booking_links l
JOIN audit.change_entities c ON c.change_id = l.change_id;
