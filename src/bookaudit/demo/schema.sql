-- Sample field-service bookings database: what a customer's application already has.
CREATE TABLE IF NOT EXISTS customers (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    phone       text,
    address     text
);

CREATE TABLE IF NOT EXISTS bookings (
    id              bigserial PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES customers (id),
    service         text NOT NULL,
    address         text NOT NULL,
    scheduled_start timestamptz,
    scheduled_end   timestamptz,
    status          text NOT NULL DEFAULT 'requested',
    price           numeric(12, 2) NOT NULL,
    currency        char(3) NOT NULL DEFAULT 'EUR',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS assignments (
    id           bigserial PRIMARY KEY,
    booking_id   bigint NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    fieldworker  text NOT NULL,
    assigned_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS invoices (
    id          bigserial PRIMARY KEY,
    booking_id  bigint NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    number      text NOT NULL UNIQUE,
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'draft',
    sent_at     timestamptz
);

CREATE TABLE IF NOT EXISTS payments (
    id           bigserial PRIMARY KEY,
    booking_id   bigint NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    invoice_id   bigint REFERENCES invoices (id),
    amount       numeric(12, 2) NOT NULL,
    method       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS notes (
    id          bigserial PRIMARY KEY,
    booking_id  bigint NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    author      text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
