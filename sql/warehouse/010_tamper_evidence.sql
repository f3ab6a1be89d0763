-- Tamper evidence: every audit row change is a leaf of one SHA-256 chain that
-- `bookaudit warehouse verify` recomputes, so even an owner who bypasses the append-only
-- triggers cannot change, delete or slip in a row without the chain showing it.
-- The canonical form and the hashes are defined once, in bookaudit/chain.py: the writer computes
-- each row's leaf as it writes, and appends one link per transaction here.

-- A warehouse from before this layout has a per-row chain table of the same name; keep it
-- beside the new one (verify names it) rather than refuse to start.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('audit.chain') AND attname = 'prev_hash'
                 AND attnum > 0 AND NOT attisdropped
                 AND (SELECT relkind FROM pg_class WHERE oid = to_regclass('audit.chain')) = 'r')
    THEN
        ALTER TABLE audit.chain RENAME TO chain_v1;
    END IF;
END
$$;
DROP FUNCTION IF EXISTS audit.chain_append(bigint[]);
DROP FUNCTION IF EXISTS audit.verify_chain();
DROP FUNCTION IF EXISTS audit.canonical(bigint);

-- One link per writer transaction: the rows it stored, their leaves (32 bytes each, same order),
-- and hash = sha256(prev_hash || sha256(leaves)).
CREATE TABLE IF NOT EXISTS audit.chain_links (
    position   bigint      PRIMARY KEY,
    change_ids bigint[]    NOT NULL,
    leaves     bytea       NOT NULL,
    prev_hash  bytea       NOT NULL,
    hash       bytea       NOT NULL,
    linked_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(leaves) = 32 * cardinality(change_ids))
);

SELECT audit.make_append_only(ARRAY['chain_links']);

-- Which link holds which row, with its leaf: for people reading the chain, not for verify.
CREATE OR REPLACE VIEW audit.chain AS
SELECT l.position,
       u.change_id,
       substring(l.leaves FROM (u.n - 1)::int * 32 + 1 FOR 32) AS leaf
FROM audit.chain_links l
CROSS JOIN LATERAL unnest(l.change_ids) WITH ORDINALITY AS u(change_id, n);

CREATE OR REPLACE FUNCTION audit.chain_genesis() RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(convert_to('bookaudit audit chain v2', 'UTF8')) $$;

-- Called by the writer as the last statement of its batch transaction. The advisory lock is
-- held until commit, so writers append their links one after another, and the head read after
-- taking it is the committed head (READ COMMITTED takes a new snapshot per statement). Only the
-- link is serialized: the rows were written, and their leaves computed, before the lock.
CREATE OR REPLACE FUNCTION audit.chain_link(ids bigint[], leaves bytea) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    head_position bigint;
    head_hash bytea;
BEGIN
    IF ids IS NULL OR cardinality(ids) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('bookaudit.audit.chain'));
    SELECT l.position, l.hash INTO head_position, head_hash
    FROM audit.chain_links l ORDER BY l.position DESC LIMIT 1;
    IF head_position IS NULL THEN
        head_position := 0;
        head_hash := audit.chain_genesis();
    END IF;
    INSERT INTO audit.chain_links (position, change_ids, leaves, prev_hash, hash)
    VALUES (head_position + 1, ids, leaves, head_hash, sha256(head_hash || sha256(leaves)));
    RETURN head_position + 1;
END
$$;
