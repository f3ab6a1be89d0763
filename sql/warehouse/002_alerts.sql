-- bookaudit warehouse: what the alerting job records. Append-only like the audit tables.

-- One row per (change, rule) that fired; `document` is the exact record every output carries.
CREATE TABLE IF NOT EXISTS audit.alerts (
    id              bigserial   PRIMARY KEY,
    alert_id        text        NOT NULL UNIQUE,
    rule            text        NOT NULL,
    kind            text        NOT NULL,
    severity        text        NOT NULL,
    message         text        NOT NULL,
    -- The change's identity: the same key audit.row_changes is unique on (the link back).
    source          text        NOT NULL,
    commit_lsn      pg_lsn      NOT NULL,
    sequence        bigint      NOT NULL,
    txid            bigint      NOT NULL,
    committed_at    timestamptz NOT NULL,
    table_name      text        NOT NULL,
    booking_id      text,
    actor           text        NOT NULL,
    actor_role      text,
    approval_ref    text,
    old_price       numeric,
    new_price       numeric,
    change_pct      numeric,
    document        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Exactly one alert per change and rule, however often the change is replayed.
    UNIQUE (source, commit_lsn, sequence, rule)
);

CREATE INDEX IF NOT EXISTS alerts_committed_at ON audit.alerts (committed_at);
CREATE INDEX IF NOT EXISTS alerts_booking ON audit.alerts (booking_id, committed_at);

-- The transactional outbox: written in the same transaction as the alert, one row per output
-- the alert must reach. `owner` is the consumer instance that delivers it while it lives; an
-- instance's advisory lock tells the others whether it still does.
CREATE TABLE IF NOT EXISTS audit.alert_outbox (
    alert           bigint      NOT NULL REFERENCES audit.alerts (id),
    channel         text        NOT NULL CHECK (channel IN ('kafka', 'webhook')),
    owner           text        NOT NULL,
    PRIMARY KEY (alert, channel)
);

-- A row once an output has the alert. Insert-only, so "pending" is outbox minus deliveries and
-- a delivery is never rewritten.
CREATE TABLE IF NOT EXISTS audit.alert_deliveries (
    alert           bigint      NOT NULL,
    channel         text        NOT NULL,
    target          text        NOT NULL,
    kafka_partition int,
    kafka_offset    bigint,
    http_status     int,
    attempts        int         NOT NULL,
    delivered_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (alert, channel),
    FOREIGN KEY (alert, channel) REFERENCES audit.alert_outbox (alert, channel)
);

-- The alerting job's memory of watched changes and sent invoices, for rules that look beyond one
-- change (after invoice sent, repeated edits). Keyed by the change's identity, so replays add
-- nothing; `event` is the change as the rules see it.
CREATE TABLE IF NOT EXISTS audit.alert_context (
    source          text        NOT NULL,
    commit_lsn      pg_lsn      NOT NULL,
    sequence        bigint      NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('edit', 'invoice_sent')),
    booking_id      text        NOT NULL,
    actor           text,
    committed_at    timestamptz NOT NULL,
    event           jsonb       NOT NULL,
    PRIMARY KEY (source, commit_lsn, sequence, kind)
);

CREATE INDEX IF NOT EXISTS alert_context_booking
    ON audit.alert_context (source, booking_id, kind, commit_lsn, sequence);

SELECT audit.make_append_only(ARRAY['alerts', 'alert_outbox', 'alert_deliveries', 'alert_context']);
