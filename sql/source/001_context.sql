-- bookaudit source install: the actor-context API and the statement trigger that puts it in the WAL.
CREATE SCHEMA IF NOT EXISTS bookaudit;
-- The application's own role, owner of nothing, calls set_actor and runs the context triggers.
GRANT USAGE ON SCHEMA bookaudit TO PUBLIC;

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
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting(name, true), '') $$;

CREATE OR REPLACE FUNCTION bookaudit.current_context() RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'actor', bookaudit._setting('bookaudit.actor'),
        'role', bookaudit._setting('bookaudit.role'),
        'reason', bookaudit._setting('bookaudit.reason'),
        'approval_ref', bookaudit._setting('bookaudit.approval_ref'),
        'request_id', bookaudit._setting('bookaudit.request_id'),
        'application', nullif(current_setting('application_name'), ''),
        'db_user', session_user::text,
        'client_addr', host(inet_client_addr()),
        'origin', CASE WHEN bookaudit._setting('bookaudit.actor') IS NULL
                       THEN 'db_session' ELSE 'application' END
    )
$$;

-- What can change within a session, cheap to compare on every statement; session_user and the
-- client address cannot change, so the full context is built only when this mark moves.
-- An unset setting reads NULL or '' (see _setting): both become '' here, as both mean unset.
CREATE OR REPLACE FUNCTION bookaudit._context_mark() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT concat_ws(E'\x1f',
        coalesce(current_setting('bookaudit.actor', true), ''),
        coalesce(current_setting('bookaudit.role', true), ''),
        coalesce(current_setting('bookaudit.reason', true), ''),
        coalesce(current_setting('bookaudit.approval_ref', true), ''),
        coalesce(current_setting('bookaudit.request_id', true), ''),
        current_setting('application_name'))
$$;

-- Once per transaction and again whenever the context changes; the marker is transaction-local
-- and rolls back with a savepoint, exactly like the transactional message it stands for.
CREATE OR REPLACE FUNCTION bookaudit.emit_context() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    mark text := bookaudit._context_mark();
BEGIN
    IF current_setting('bookaudit._emitted', true) IS DISTINCT FROM mark THEN
        PERFORM pg_logical_emit_message(
            true, 'bookaudit.context', bookaudit.current_context()::text);
        PERFORM set_config('bookaudit._emitted', mark, true);
    END IF;
    RETURN NULL;
END
$$;
