-- bookaudit source install (logical mode), for partitioned tables: a row moving between
-- partitions read as one update, and partitions created or attached after install audited like
-- the others (see README, "Partitioned tables").

-- BEFORE and AFTER UPDATE ... FOR EACH STATEMENT on a partitioned table (logical mode): brackets
-- the statement with '<hmac hex> begin|end <table oid>' signed over 'moves:<xid>:<begin|end> <oid>'.
-- PostgreSQL writes a row that moves between partitions as a delete and an insert, and pgoutput
-- sends it so; inside these brackets the capture knows that an adjacent delete and insert of the
-- table are one row's update. Signed, so the application cannot pass its own delete and insert
-- off as one update.
CREATE OR REPLACE FUNCTION bookaudit.emit_moves() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    note bytea := convert_to(TG_ARGV[0] || ' ' || TG_RELID::text, 'UTF8');
    -- Assignments, not PERFORM (which runs a whole query); _mac is inlined (001_context.sql).
    lsn pg_lsn := pg_logical_emit_message(
        true, 'bookaudit.moves',
        convert_to(bookaudit._mac(convert_to('moves:' || bookaudit._xid() || ':', 'UTF8') || note)
                   || ' ', 'UTF8') || note);
BEGIN
    RETURN NULL;
END
$$;

-- BEFORE INSERT OR UPDATE OR DELETE ... FOR EACH ROW on a partitioned table (logical mode), so
-- cloned to every partition, present and future, and named to fire after the application's
-- BEFORE triggers (so never for a row one of them skips). It matters only on a partition created
-- or attached since install or the capture last adopted partitions (see adopt_partitions); on any
-- other it costs one catalog lookup a row. Such a partition has the default replica identity,
-- under which the WAL keeps only the key of an old row: this puts the whole old row in the WAL
-- beside the change, signed: '<hmac hex> <root oid> <json object of column texts>' over
-- 'old:<xid>:<root oid> <json>'. And it lacks the context trigger, which an application writing
-- the partition directly would fire: this emits the context instead.
CREATE OR REPLACE FUNCTION bookaudit.partition_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    identity "char";
    has_context boolean;
    emitted boolean;
BEGIN
    SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_trigger t
                                    WHERE t.tgrelid = c.oid AND t.tgname = 'bookaudit_context')
      INTO identity, has_context
      FROM pg_class c WHERE c.oid = TG_RELID;
    IF NOT has_context THEN
        emitted := bookaudit._emit_context();  -- an assignment: PERFORM runs a whole query
    END IF;
    IF identity <> 'f' AND TG_OP <> 'INSERT' THEN
        PERFORM bookaudit._emit_old_row(TG_RELID, TG_ARGV[0], OLD);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

-- Each column's text by its output function, in settings that read back unambiguously (the
-- capture renders it again as its own session prints it, as pgoutput does).
CREATE OR REPLACE FUNCTION bookaudit._emit_old_row(rel oid, root text, old_row anyelement)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, MDY' SET intervalstyle = 'postgres' SET extra_float_digits = 1 AS $$
DECLARE
    names text[];
    texts text[];
    doc bytea;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO names FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
    EXECUTE format('SELECT ARRAY[%s]::text[]',
                   (SELECT string_agg(format('($1).%I::text', n), ', ') FROM unnest(names) n))
       INTO texts USING old_row;
    doc := convert_to(root || ' ' || json_object(names, texts)::text, 'UTF8');
    PERFORM pg_logical_emit_message(
        true, 'bookaudit.old',
        convert_to(bookaudit._mac(convert_to('old:' || bookaudit._xid() || ':', 'UTF8') || doc)
                   || ' ', 'UTF8') || doc);
END
$$;

-- Every partition of the partitioned tables published, partitions created or attached since
-- included: the full old row (PostgreSQL gives a new partition the default identity, which logs
-- only the key) and the statement trigger that an application writing the partition directly
-- fires (a statement trigger of the partitioned table does not fire then, nor is it cloned).
-- Returns one line per change made. Install runs it, and so does the capture when it starts and
-- when a partition's changes arrive without the full old row. (Trigger mode has its own, in
-- 002_outbox.sql.)
CREATE OR REPLACE FUNCTION bookaudit.adopt_partitions(publication text) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    root oid;
    part regclass;
BEGIN
    FOR root IN
        SELECT c.oid FROM pg_class c
         WHERE c.relkind = 'p'
           AND EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                        WHERE p.pubname = publication AND r.prrelid = c.oid)
         ORDER BY c.oid
    LOOP
        FOR part IN SELECT t.relid FROM pg_partition_tree(root) t WHERE t.relid <> root
                     ORDER BY t.level, t.relid::text
        LOOP
            BEGIN
                IF (SELECT c.relreplident FROM pg_class c WHERE c.oid = part) <> 'f' THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
                    RETURN NEXT format('partition %s of %s: REPLICA IDENTITY FULL', part,
                                       root::regclass);
                END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                                WHERE t.tgrelid = part AND t.tgname = 'bookaudit_context') THEN
                    EXECUTE format(
                        'CREATE TRIGGER bookaudit_context BEFORE INSERT OR UPDATE OR DELETE OR '
                        'TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION '
                        'bookaudit.emit_context()', part);
                    RETURN NEXT format('partition %s of %s: context trigger', part, root::regclass);
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'partition % of % is not adopted: role % does not own it; as its '
                                'owner run ALTER TABLE % REPLICA IDENTITY FULL, then `bookaudit '
                                'source install` again', part, root::regclass, current_user, part
                      USING ERRCODE = 'insufficient_privilege';
            END;
        END LOOP;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION bookaudit.emit_moves(), bookaudit.adopt_partitions(text),
    bookaudit.partition_row(), bookaudit._emit_old_row(oid, text, anyelement) FROM PUBLIC;
