-- bookaudit source install: the actor-context API and the statement trigger that puts it in the WAL.
--
-- Trust: the application may name its user (set_actor); it must never forge or suppress what the
-- database knows (session role, client address, origin, whether a context was set). So every
-- trigger function is SECURITY DEFINER, owned by the install role with search_path pinned, and an
-- application role needs no privilege here at all; only set_actor is ever granted (install
-- --grant-to). Objects are named schema-qualified throughout, as a pinned path requires.
CREATE SCHEMA IF NOT EXISTS bookaudit;
REVOKE ALL ON SCHEMA bookaudit FROM PUBLIC;

-- The key that signs each context message (HMAC-SHA256), made here by the server's strong random
-- source and never shown. Anyone may call pg_logical_emit_message, so an unsigned message proves
-- nothing; the capture, which runs as the install role, reads the key and trusts only messages
-- signed with it. The two pads are HMAC's key XOR ipad/opad, kept so that signing costs only two
-- sha256 calls.
CREATE TABLE IF NOT EXISTS bookaudit.context_key (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key       bytea   NOT NULL CHECK (length(key) = 32),
    inner_pad bytea   NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea   NOT NULL CHECK (length(outer_pad) = 64)
);
REVOKE ALL ON bookaudit.context_key FROM PUBLIC;

DO $$
DECLARE
    k bytea;
    block bytea;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bookaudit.context_key) THEN
        -- gen_random_uuid() draws on pg_strong_random: 3 x 122 random bits, hashed to 256.
        k := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                               || gen_random_uuid()::text, 'UTF8'));
        block := k || decode(repeat('00', 32), 'hex');
        inner_pad := block;
        outer_pad := block;
        FOR i IN 0..63 LOOP
            inner_pad := set_byte(inner_pad, i, get_byte(block, i) # 54);  -- 0x36
            outer_pad := set_byte(outer_pad, i, get_byte(block, i) # 92);  -- 0x5c
        END LOOP;
        INSERT INTO bookaudit.context_key (key, inner_pad, outer_pad)
        VALUES (k, inner_pad, outer_pad);
    END IF;
END
$$;

-- HMAC-SHA256 of msg under the context key, hex. Callable only by the install role (so only from
-- inside the SECURITY DEFINER triggers): a role that could call it could sign anything.
CREATE OR REPLACE FUNCTION bookaudit._mac(msg bytea) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT encode(pg_catalog.sha256(k.outer_pad || pg_catalog.sha256(k.inner_pad || msg)), 'hex')
    FROM bookaudit.context_key k
$$;

-- Transaction-scoped (is_local) so a pooled session never carries one request's actor into the next.
CREATE OR REPLACE FUNCTION bookaudit.set_actor(
    actor text,
    role text DEFAULT NULL,
    reason text DEFAULT NULL,
    approval_ref text DEFAULT NULL,
    request_id text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF actor IS NULL OR btrim(actor) = '' THEN
        RAISE EXCEPTION 'bookaudit.set_actor: actor must be a non-empty string';
    END IF;
    PERFORM set_config('bookaudit.actor', actor, true);
    PERFORM set_config('bookaudit.role', coalesce(role, ''), true);
    PERFORM set_config('bookaudit.reason', coalesce(reason, ''), true);
    PERFORM set_config('bookaudit.approval_ref', coalesce(approval_ref, ''), true);
    PERFORM set_config('bookaudit.request_id', coalesce(request_id, ''), true);
END
$$;

-- A setting once set in a session reads '' (not NULL) in later transactions: '' means unset.
CREATE OR REPLACE FUNCTION bookaudit._setting(name text) RETURNS text
LANGUAGE sql STABLE AS $$ SELECT nullif(pg_catalog.current_setting(name, true), '') $$;

-- What the application says (actor ... request_id, and its application_name) beside what the
-- database knows (session_user, the client address, and so the origin). session_user is the
-- login role even inside a SECURITY DEFINER function, where current_user is the owner.
CREATE OR REPLACE FUNCTION bookaudit.current_context() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.jsonb_build_object(
        'actor', bookaudit._setting('bookaudit.actor'),
        'role', bookaudit._setting('bookaudit.role'),
        'reason', bookaudit._setting('bookaudit.reason'),
        'approval_ref', bookaudit._setting('bookaudit.approval_ref'),
        'request_id', bookaudit._setting('bookaudit.request_id'),
        'application', nullif(pg_catalog.current_setting('application_name'), ''),
        'db_user', session_user::text,
        'client_addr', pg_catalog.host(pg_catalog.inet_client_addr()),
        'origin', CASE WHEN bookaudit._setting('bookaudit.actor') IS NULL
                       THEN 'db_session' ELSE 'application' END
    )
$$;

-- What can change within a session, cheap to compare on every statement; session_user and the
-- client address cannot change, so the full context is built only when this mark moves.
-- An unset setting reads NULL or '' (see _setting): both become '' here, as both mean unset.
CREATE OR REPLACE FUNCTION bookaudit._context_mark() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.concat_ws(E'\x1f',
        coalesce(pg_catalog.current_setting('bookaudit.actor', true), ''),
        coalesce(pg_catalog.current_setting('bookaudit.role', true), ''),
        coalesce(pg_catalog.current_setting('bookaudit.reason', true), ''),
        coalesce(pg_catalog.current_setting('bookaudit.approval_ref', true), ''),
        coalesce(pg_catalog.current_setting('bookaudit.request_id', true), ''),
        pg_catalog.current_setting('application_name'))
$$;

-- The 32-bit transaction id, as logical decoding's BEGIN reports it: a signature names its
-- transaction, so no signed message or marker is good in another one.
CREATE OR REPLACE FUNCTION bookaudit._xid() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT (pg_catalog.pg_current_xact_id()::text::bigint % 4294967296)::text
$$;

-- BEFORE ... FOR EACH STATEMENT on every audited table (logical mode): emits the context once per
-- transaction and again whenever it changes, as '<hmac hex> <context json>' signed over
-- 'context:<xid>:<json>'. Whether it was already emitted is kept in a transaction-local setting
-- that anyone could set, so the setting carries its own HMAC over 'emitted:<xid>:<mark>': the
-- application can neither preset it nor carry it into another transaction (the two prefixes keep
-- a marker, which the session can read, from ever passing for a message signature).
CREATE OR REPLACE FUNCTION bookaudit.emit_context() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM bookaudit._emit_context();
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION bookaudit._emit_context() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mark text := bookaudit._context_mark();
    seen text := current_setting('bookaudit._emitted', true);
    xid text;
    context bytea;
BEGIN
    -- Cheap test first: the mark must match before the signature is worth checking.
    IF seen IS NOT NULL AND substr(seen, 66) = mark THEN
        xid := bookaudit._xid();
        IF left(seen, 64) = bookaudit._mac(convert_to('emitted:' || xid || ':' || mark, 'UTF8'))
        THEN
            RETURN;
        END IF;
    END IF;
    xid := bookaudit._xid();
    context := convert_to(bookaudit.current_context()::text, 'UTF8');
    PERFORM pg_logical_emit_message(
        true, 'bookaudit.context',
        convert_to(bookaudit._mac(convert_to('context:' || xid || ':', 'UTF8') || context) || ' ',
                   'UTF8') || context);
    PERFORM set_config(
        'bookaudit._emitted',
        bookaudit._mac(convert_to('emitted:' || xid || ':' || mark, 'UTF8')) || ' ' || mark,
        true);
END
$$;

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
BEGIN
    PERFORM pg_logical_emit_message(
        true, 'bookaudit.moves',
        convert_to(bookaudit._mac(convert_to('moves:' || bookaudit._xid() || ':', 'UTF8') || note)
                   || ' ', 'UTF8') || note);
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
BEGIN
    SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_trigger t
                                    WHERE t.tgrelid = c.oid AND t.tgname = 'bookaudit_context')
      INTO identity, has_context
      FROM pg_class c WHERE c.oid = TG_RELID;
    IF NOT has_context THEN
        PERFORM bookaudit._emit_context();
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

-- Every partition of the partitioned tables audited now (published in logical mode, carrying the
-- outbox trigger in trigger mode), partitions created or attached since included: the full old
-- row (logical mode; PostgreSQL gives a new partition the default identity, which logs only the
-- key) and the statement trigger that an application writing the partition directly fires (a
-- statement trigger of the partitioned table does not fire then, nor is it cloned). Returns one
-- line per change made. Install runs it, and so do the capture and the relay when they start and
-- (logical mode) when a partition's changes arrive without the full old row.
CREATE OR REPLACE FUNCTION bookaudit.adopt_partitions(publication text) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    trigger_mode boolean := to_regclass('bookaudit.outbox') IS NOT NULL;
    root oid;
    part regclass;
BEGIN
    FOR root IN
        SELECT c.oid FROM pg_class c
         WHERE c.relkind = 'p' AND CASE WHEN trigger_mode
             THEN EXISTS (SELECT 1 FROM pg_trigger t
                           WHERE t.tgrelid = c.oid AND t.tgname = '0_bookaudit_outbox')
             ELSE EXISTS (SELECT 1 FROM pg_publication_rel r
                            JOIN pg_publication p ON p.oid = r.prpubid
                           WHERE p.pubname = publication AND r.prrelid = c.oid) END
         ORDER BY c.oid
    LOOP
        FOR part IN SELECT t.relid FROM pg_partition_tree(root) t WHERE t.relid <> root
                     ORDER BY t.level, t.relid::text
        LOOP
            BEGIN
                IF NOT trigger_mode
                   AND (SELECT c.relreplident FROM pg_class c WHERE c.oid = part) <> 'f' THEN
                    EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', part);
                    RETURN NEXT format('partition %s of %s: REPLICA IDENTITY FULL', part,
                                       root::regclass);
                END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                                WHERE t.tgrelid = part AND t.tgname = 'bookaudit_context') THEN
                    EXECUTE format(
                        'CREATE TRIGGER bookaudit_context BEFORE INSERT OR UPDATE OR DELETE OR '
                        'TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s', part,
                        CASE WHEN trigger_mode
                             THEN format('bookaudit.record_context(%L)', root::text)
                             ELSE 'bookaudit.emit_context()' END);
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
    bookaudit.partition_row(), bookaudit._emit_old_row(oid, text, anyelement),
    bookaudit._emit_context() FROM PUBLIC;

REVOKE ALL ON FUNCTION bookaudit._mac(bytea), bookaudit._setting(text),
    bookaudit.current_context(), bookaudit._context_mark(), bookaudit._xid(),
    bookaudit.emit_context(), bookaudit.set_actor(text, text, text, text, text)
    FROM PUBLIC;
