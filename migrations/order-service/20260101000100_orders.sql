-- order-service: orders are plain CRUD rows (pitfall 2: no event sourcing). Every change bumps
-- `revision` and writes its event to the outbox (eda-outbox's own migration) in the same
-- transaction.
CREATE TABLE orders (
    id            uuid        PRIMARY KEY,              -- UUIDv7: time-ordered, used for paging
    user_id       text        NOT NULL,                 -- JWT subject of the owner
    customer_name text        NOT NULL,
    customer_email text       NOT NULL,
    currency      text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('PLACED', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    total_cents   bigint      NOT NULL CHECK (total_cents >= 0),
    revision      bigint      NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_id_idx ON orders (user_id, id DESC);

CREATE TABLE order_items (
    order_id         uuid    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          int     NOT NULL,
    sku              text    NOT NULL,
    quantity         int     NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- A retried POST with the same Idempotency-Key creates one order. The request hash detects a
-- key reused for a different request.
CREATE TABLE idempotency_keys (
    user_id      text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    order_id     uuid        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
