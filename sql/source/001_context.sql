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

-- HMAC-SHA256 of msg under the pads of a key, hex. Inlined where it is called (a plain
-- expression), so signing costs the two sha256 calls and nothing more.
CREATE OR REPLACE FUNCTION bookaudit._hmac(inner_pad bytea, outer_pad bytea, msg bytea)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(outer_pad || pg_catalog.sha256(inner_pad || msg)),
                             'hex')
$$;

-- The key's pads, for the triggers to sign with. IMMUTABLE although they read a table, on purpose:
-- the planner then evaluates them once, when it plans an expression that calls them, and the
-- plan that PL/pgSQL keeps for the session holds the pads as constants. Signing so costs no query
-- at all; a query of the key costs an executor start per statement, and an SQL function with a
-- FROM clause was even planned anew in every transaction. Sound because the key is written once,
-- at the first install, and never changed (a session would sign with the pads it planned with
-- until it reconnects). Callable only by the install role, like the key itself: planning a call
-- runs it, so the application role cannot even EXPLAIN one.
CREATE OR REPLACE FUNCTION bookaudit._inner_pad() RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT k.inner_pad FROM bookaudit.context_key k $$;

CREATE OR REPLACE FUNCTION bookaudit._outer_pad() RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT k.outer_pad FROM bookaudit.context_key k $$;

-- HMAC-SHA256 of msg under the context key, hex. Inlined where it is called (a plain expression
-- over the pads above), so it costs the two sha256 calls and nothing more. Callable only by the
-- install role (so only from inside the SECURITY DEFINER triggers): a role that could call it
-- could sign anything.
CREATE OR REPLACE FUNCTION bookaudit._mac(msg bytea) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT bookaudit._hmac(bookaudit._inner_pad(), bookaudit._outer_pad(), msg)
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
-- login role even inside a SECURITY DEFINER function, where current_user is the owner. Built as
-- json text by json_object, every value a string or null: the cheapest of PostgreSQL's builders
-- (jsonb_build_object sorts its keys and looks up each argument's type at every call), and the
-- logical-mode trigger signs this text as it is.
CREATE OR REPLACE FUNCTION bookaudit._context_document() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.json_object(
        '{actor,role,reason,approval_ref,request_id,application,db_user,client_addr,origin}'::text[],
        ARRAY[
            bookaudit._setting('bookaudit.actor'),
            bookaudit._setting('bookaudit.role'),
            bookaudit._setting('bookaudit.reason'),
            bookaudit._setting('bookaudit.approval_ref'),
            bookaudit._setting('bookaudit.request_id'),
            nullif(pg_catalog.current_setting('application_name'), ''),
            session_user::text,
            pg_catalog.host(pg_catalog.inet_client_addr()),
            CASE WHEN bookaudit._setting('bookaudit.actor') IS NULL
                 THEN 'db_session' ELSE 'application' END
        ])::text
$$;

-- The context as jsonb (trigger mode's outbox keeps it so).
CREATE OR REPLACE FUNCTION bookaudit.current_context() RETURNS jsonb
LANGUAGE sql STABLE AS $$ SELECT bookaudit._context_document()::jsonb $$;

-- What can change within a session, cheap to compare on every statement; session_user and the
-- client address cannot change, so the full context is built only when this mark moves.
-- An unset setting reads NULL or '' (see _setting): concat makes both '', as both mean unset.
CREATE OR REPLACE FUNCTION bookaudit._context_mark() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pg_catalog.concat(
        pg_catalog.current_setting('bookaudit.actor', true), E'\x1f',
        pg_catalog.current_setting('bookaudit.role', true), E'\x1f',
        pg_catalog.current_setting('bookaudit.reason', true), E'\x1f',
        pg_catalog.current_setting('bookaudit.approval_ref', true), E'\x1f',
        pg_catalog.current_setting('bookaudit.request_id', true), E'\x1f',
        pg_catalog.current_setting('application_name'))
$$;

-- The 32-bit transaction id, as logical decoding's BEGIN reports it: a signature names its
-- transaction, so no signed message or marker is good in another one.
CREATE OR REPLACE FUNCTION bookaudit._xid() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.xid(pg_catalog.pg_current_xact_id())::text
$$;

-- BEFORE ... FOR EACH STATEMENT on every audited table (logical mode): emits the context once per
-- transaction and again whenever it changes, as '<hmac hex> <context json>' signed over
-- 'context:<xid>:<json>'. Whether it was already emitted is kept in a transaction-local setting
-- that anyone could set, so the setting holds an HMAC over 'emitted:<xid>:<mark>': the
-- application can neither preset it nor carry it into another transaction (the two prefixes keep
-- a marker, which the session can read, from ever passing for a message signature).
CREATE OR REPLACE FUNCTION bookaudit.emit_context() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- An assignment, not PERFORM: PERFORM runs a whole query (an executor start) every time.
    emitted boolean := bookaudit._emit_context();
BEGIN
    RETURN NULL;
END
$$;

-- The body of emit_context, shared with the partition row trigger (005_partitions.sql); true if
-- it emitted. Called only from those SECURITY DEFINER functions, whose pinned search_path it runs
-- under: a SET clause of its own would cost about 5 µs a statement (a plain call costs under 1).
--
-- Every statement of a trigger costs here: PL/pgSQL sets up each expression's state anew in every
-- transaction, at a price that grows with its size, and PERFORM or SELECT INTO run a query. So
-- the work is a few plain expressions: the marker's HMAC is computed once, serving both as the
-- check and as the new marker; the pads are constants in the plan (see _inner_pad); and a later
-- statement of the transaction whose mark is unchanged pays the mark, the HMAC and one compare.
-- Earlier installs returned void; the marker was '<hmac> <mark>' (a marker of theirs is refused).
DROP FUNCTION IF EXISTS bookaudit._emit_context();
CREATE FUNCTION bookaudit._emit_context() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    mark text := bookaudit._context_mark();
    xid text := bookaudit._xid();
    marker text := bookaudit._mac(convert_to('emitted:' || xid || ':' || mark, 'UTF8'));
    context bytea;
    lsn pg_lsn;
BEGIN
    IF current_setting('bookaudit._emitted', true) = marker THEN
        RETURN false;
    END IF;
    context := convert_to(bookaudit._context_document(), 'UTF8');
    lsn := pg_logical_emit_message(
        true, 'bookaudit.context',
        convert_to(bookaudit._mac(convert_to('context:' || xid || ':', 'UTF8') || context) || ' ',
                   'UTF8') || context);
    marker := set_config('bookaudit._emitted', marker, true);
    RETURN true;
END
$$;

REVOKE ALL ON FUNCTION bookaudit._mac(bytea), bookaudit._hmac(bytea, bytea, bytea),
    bookaudit._inner_pad(), bookaudit._outer_pad(), bookaudit._setting(text),
    bookaudit._context_document(),
    bookaudit.current_context(), bookaudit._context_mark(), bookaudit._xid(),
    bookaudit.emit_context(), bookaudit._emit_context(),
    bookaudit.set_actor(text, text, text, text, text)
    FROM PUBLIC;
