-- The read-only role `bookaudit serve` reads through: SELECT on the audit schema and nothing else.
-- Roles are cluster-wide, so two warehouses on one server share it; a role that may not create
-- roles gets a notice here, and `serve` then refuses to start unless its own role is read-only.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bookaudit_reader') THEN
        CREATE ROLE bookaudit_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- another init created it meanwhile
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'bookaudit_reader not created: this role may not create roles';
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bookaudit_reader') THEN
        GRANT USAGE ON SCHEMA audit TO bookaudit_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA audit TO bookaudit_reader;
        -- The warehouse owner may take the role for `serve` (a superuser needs no grant).
        IF NOT pg_has_role(current_user, 'bookaudit_reader', 'MEMBER') THEN
            EXECUTE format('GRANT bookaudit_reader TO %I', current_user);
        END IF;
    END IF;
END
$$;
