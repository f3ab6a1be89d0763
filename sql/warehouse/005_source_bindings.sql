-- Which source database each source name belongs to. The first writer to see a name binds it to
-- the database its events come from; events under that name from any other database are
-- dead-lettered rather than mixed in (two captures left at the default name would otherwise
-- merge their histories, and in trigger mode drop each other's events as copies).
CREATE TABLE IF NOT EXISTS audit.source_bindings (
    name      text        PRIMARY KEY,
    -- '<system identifier>/<database name>' of the source, as its capture reports it.
    identity  text        NOT NULL,
    bound_at  timestamptz NOT NULL DEFAULT now()
);
