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

-- HMAC-SHA256 of msg under the context key, hex. Callable only by the install role (so only from
-- inside the SECURITY DEFINER triggers): a role that could call it could sign anything.
-- PL/pgSQL, not SQL: an SQL function with a FROM clause is not inlined, and its query was
-- planned anew in every transaction that called it; PL/pgSQL keeps the plan for the session.
CREATE OR REPLACE FUNCTION bookaudit._mac(msg bytea) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    ipad bytea;
    opad bytea;
BEGIN
    SELECT k.inner_pad, k.outer_pad INTO ipad, opad FROM bookaudit.context_key k;
    RETURN bookaudit._hmac(ipad, opad, msg);
END
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
--
-- The key's pads are read by the function's own statement (PL/pgSQL keeps its plan for the
-- session) and the MACs are computed inline: calling _mac, an SQL function with a FROM clause,
-- planned its query anew in every transaction and more than doubled the backend's CPU per
-- one-row transaction (about 470 against 210 µs, measured with pgbench).
CREATE OR REPLACE FUNCTION bookaudit.emit_context() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM bookaudit._emit_context();
    RETURN NULL;
END
$$;

-- The body of emit_context, shared with the partition row trigger (005_partitions.sql). Called
-- only from those SECURITY DEFINER functions, whose pinned search_path it runs under: a SET
-- clause of its own would cost about 5 µs a statement (a plain call costs under 1 µs).
CREATE OR REPLACE FUNCTION bookaudit._emit_context() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    mark text := bookaudit._context_mark();
    seen text := current_setting('bookaudit._emitted', true);
    xid text;
    context bytea;
    ipad bytea;
    opad bytea;
BEGIN
    SELECT k.inner_pad, k.outer_pad INTO ipad, opad FROM bookaudit.context_key k;
    -- Cheap test first: the mark must match before the signature is worth checking.
    IF seen IS NOT NULL AND substr(seen, 66) = mark THEN
        xid := bookaudit._xid();
        IF left(seen, 64)
           = bookaudit._hmac(ipad, opad, convert_to('emitted:' || xid || ':' || mark, 'UTF8'))
        THEN
            RETURN;
        END IF;
    END IF;
    xid := bookaudit._xid();
    context := convert_to(bookaudit.current_context()::text, 'UTF8');
    PERFORM pg_logical_emit_message(
        true, 'bookaudit.context',
        convert_to(bookaudit._hmac(ipad, opad, convert_to('context:' || xid || ':', 'UTF8')
                                                || context) || ' ',
                   'UTF8') || context);
    PERFORM set_config(
        'bookaudit._emitted',
        bookaudit._hmac(ipad, opad, convert_to('emitted:' || xid || ':' || mark, 'UTF8'))
            || ' ' || mark,
        true);
END
$$;

REVOKE ALL ON FUNCTION bookaudit._mac(bytea), bookaudit._hmac(bytea, bytea, bytea),
    bookaudit._setting(text),
    bookaudit.current_context(), bookaudit._context_mark(), bookaudit._xid(),
    bookaudit.emit_context(), bookaudit._emit_context(),
    bookaudit.set_actor(text, text, text, text, text)
    FROM PUBLIC;
