-- Tamper evidence: each audit row change is linked into a SHA-256 chain that
-- `bookaudit warehouse verify` recomputes, so even an owner who bypasses the append-only
-- triggers cannot change, delete or slip in a row without the chain showing it.
CREATE TABLE IF NOT EXISTS audit.chain (
    position   bigint PRIMARY KEY,
    change_id  bigint NOT NULL UNIQUE REFERENCES audit.row_changes (id),
    prev_hash  bytea  NOT NULL,
    hash       bytea  NOT NULL
);

SELECT audit.make_append_only(ARRAY['chain']);

CREATE OR REPLACE FUNCTION audit.chain_genesis() RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(convert_to('bookaudit audit chain v1', 'UTF8')) $$;

-- Timestamps are hashed as epoch numbers: their text form would follow the session's TimeZone.
CREATE OR REPLACE FUNCTION audit.canonical(change bigint) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT convert_to((
        (to_jsonb(r) - 'committed_at' - 'recorded_at')
        || jsonb_build_object(
            'committed_at', extract(epoch FROM r.committed_at)::text,
            'recorded_at', extract(epoch FROM r.recorded_at)::text,
            'fields', coalesce((
                SELECT jsonb_agg(jsonb_build_array(f.field, f.position, f.old_value, f.new_value)
                                 ORDER BY f.position)
                FROM audit.field_changes f WHERE f.change_id = r.id), '[]'::jsonb))
    )::text, 'UTF8')
    FROM audit.row_changes r
    WHERE r.id = change
$$;

-- Called by the writer in its batch transaction, after the rows and their fields are in.
-- The advisory lock is held until commit, so concurrent writers append one after another.
CREATE OR REPLACE FUNCTION audit.chain_append(changes bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last_position bigint;
    last_hash bytea;
    change bigint;
    next_hash bytea;
BEGIN
    IF changes IS NULL OR cardinality(changes) = 0 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('bookaudit.audit.chain'));
    SELECT c.position, c.hash INTO last_position, last_hash
    FROM audit.chain c ORDER BY c.position DESC LIMIT 1;
    IF last_position IS NULL THEN
        last_position := 0;
        last_hash := audit.chain_genesis();
    END IF;
    FOREACH change IN ARRAY (SELECT array_agg(x ORDER BY x) FROM unnest(changes) x) LOOP
        last_position := last_position + 1;
        next_hash := sha256(last_hash || audit.canonical(change));
        INSERT INTO audit.chain (position, change_id, prev_hash, hash)
        VALUES (last_position, change, last_hash, next_hash);
        last_hash := next_hash;
    END LOOP;
    RETURN cardinality(changes);
END
$$;

CREATE OR REPLACE FUNCTION audit.verify_chain() RETURNS TABLE (problem text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    prev bytea := audit.chain_genesis();
    expected bigint := 1;
    link record;
    content bytea;
    orphan bigint;
BEGIN
    FOR link IN SELECT * FROM audit.chain ORDER BY position LOOP
        IF link.position <> expected THEN
            problem := format('chain positions %s to %s are missing', expected, link.position - 1);
            RETURN NEXT;
        END IF;
        IF link.prev_hash <> prev THEN
            problem := format('chain position %s does not link to the entry before it', link.position);
            RETURN NEXT;
        END IF;
        content := audit.canonical(link.change_id);
        IF content IS NULL THEN
            problem := format('audit row %s (chain position %s) was deleted', link.change_id, link.position);
            RETURN NEXT;
        ELSIF sha256(link.prev_hash || content) <> link.hash THEN
            problem := format('audit row %s (chain position %s) was modified', link.change_id, link.position);
            RETURN NEXT;
        END IF;
        prev := link.hash;
        expected := link.position + 1;
    END LOOP;
    FOR orphan IN
        SELECT r.id FROM audit.row_changes r
        WHERE NOT EXISTS (SELECT 1 FROM audit.chain c WHERE c.change_id = r.id)
        ORDER BY r.id
    LOOP
        problem := format('audit row %s is not in the chain: it was written around the audit writer', orphan);
        RETURN NEXT;
    END LOOP;
END
$$;
