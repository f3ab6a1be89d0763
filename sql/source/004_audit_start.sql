-- bookaudit source install, both modes: where the audit starts, and the baseline of the rows that
-- existed then, staged for the capture to relay (see bookaudit/source/audit_start.py).

-- One row: written 'creating' before the slot or boundary is taken and 'ready' in the same
-- transaction that stages the baseline, so an install killed halfway is redone, never half-used.
CREATE TABLE IF NOT EXISTS bookaudit.audit_start (
    one         boolean     PRIMARY KEY DEFAULT true CHECK (one),
    state       text        NOT NULL CHECK (state IN ('creating', 'ready')),
    mode        text        NOT NULL,
    complete_from text,                 -- what the install printed: an LSN or a commit number
    position    bigint,                 -- commit LSN (or commit_seq) the baseline events carry:
                                        -- below every audited change, so never one of theirs
    started_at  timestamptz,            -- no audited change committed before this
    baseline_rows bigint NOT NULL DEFAULT 0
);

-- One row per audited table with a staged baseline, in the order the capture relays them.
CREATE TABLE IF NOT EXISTS bookaudit.baseline (
    position       integer PRIMARY KEY,
    schema_name    text    NOT NULL,
    table_name     text    NOT NULL,
    staging        text    NOT NULL,    -- bookaudit.<staging>: the rows, numbered in key order
    key_columns    text[]  NOT NULL,
    first_sequence bigint  NOT NULL,    -- the event sequence of this table's first row
    rows           bigint  NOT NULL,
    sent           bigint  NOT NULL DEFAULT 0  -- rows Kafka acknowledged: the capture resumes here
);
