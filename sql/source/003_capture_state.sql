-- bookaudit source install (logical mode): what the capture has confirmed, kept outside the slot,
-- so that a lost slot can be named with what was lost; and the gaps a user accepted.

-- One row per slot: the last position up to which every change is in Kafka, and when.
CREATE TABLE IF NOT EXISTS bookaudit.capture_state (
    slot          text        PRIMARY KEY,
    confirmed_lsn pg_lsn      NOT NULL,
    confirmed_at  timestamptz NOT NULL
);

-- One row per gap accepted with `capture --accept-gap`. The table is in the publication, so
-- the row travels the pipeline like any change and lands in the warehouse, inside the hash
-- chain, where `history` and `warehouse verify` show it.
CREATE TABLE IF NOT EXISTS bookaudit.capture_gaps (
    gap_no             bigserial   PRIMARY KEY,
    slot               text        NOT NULL,
    reason             text        NOT NULL,
    last_confirmed_lsn pg_lsn,
    last_confirmed_at  timestamptz,
    resumed_lsn        pg_lsn      NOT NULL,
    accepted_by        text        NOT NULL DEFAULT session_user,
    accepted_at        timestamptz NOT NULL DEFAULT now()
);
