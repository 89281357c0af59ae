-- inventory-service: stock per SKU and one reservation per order, plain CRUD rows. Every change
-- bumps `revision`; stock rows are updated with optimistic locking (WHERE revision = $seen).
CREATE TABLE stock (
    sku        text        PRIMARY KEY,
    available  bigint      NOT NULL CHECK (available >= 0),  -- free to reserve
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    revision   bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    order_id   uuid        PRIMARY KEY,
    status     text        NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED')),
    lines      jsonb       NOT NULL,          -- [{"sku": ..., "quantity": ...}]
    reason     text,                          -- why it was rejected
    revision   bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
