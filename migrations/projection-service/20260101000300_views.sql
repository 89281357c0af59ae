-- projection-service: read models fed by Debezium change events of the services' CRUD tables
-- (pitfall 2: CRUD + CDC instead of event sourcing). Every row keeps the source row's revision
-- (a change is applied only when newer), the source commit time and the time it was applied.

-- order-service's orders: one row per order.
CREATE TABLE order_view (
    order_id            uuid        PRIMARY KEY,
    user_id             text        NOT NULL,
    customer_name       text        NOT NULL,
    customer_email      text        NOT NULL,
    currency            text        NOT NULL,
    status              text        NOT NULL,
    total_cents         bigint      NOT NULL,
    revision            bigint      NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    -- The writer's trace context, captured from the source row: the projection's span joins
    -- the request's trace.
    traceparent         text,
    source_committed_at timestamptz NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_view_user_idx ON order_view (user_id, order_id DESC);

-- order-service's order_items: immutable lines (no revision of their own).
CREATE TABLE order_line_view (
    order_id            uuid        NOT NULL,
    line_no             int         NOT NULL,
    sku                 text        NOT NULL,
    quantity            int         NOT NULL,
    unit_price_cents    bigint      NOT NULL,
    source_committed_at timestamptz NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (order_id, line_no)
);

-- inventory-service's reservations: the outcome of each order's reservation.
CREATE TABLE reservation_view (
    order_id            uuid        PRIMARY KEY,
    status              text        NOT NULL,
    reason              text,
    revision            bigint      NOT NULL,
    updated_at          timestamptz NOT NULL,
    source_committed_at timestamptz NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- inventory-service's stock.
CREATE TABLE stock_view (
    sku                 text        PRIMARY KEY,
    available           bigint      NOT NULL,
    reserved            bigint      NOT NULL,
    revision            bigint      NOT NULL,
    updated_at          timestamptz NOT NULL,
    source_committed_at timestamptz NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Maintained in the same transaction as order_view: counts by status and the amount spent
-- (confirmed orders) per customer.
CREATE TABLE customer_summary (
    user_id     text        PRIMARY KEY,
    orders      bigint      NOT NULL DEFAULT 0,
    placed      bigint      NOT NULL DEFAULT 0,
    confirmed   bigint      NOT NULL DEFAULT 0,
    rejected    bigint      NOT NULL DEFAULT 0,
    cancelled   bigint      NOT NULL DEFAULT 0,
    spent_cents bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Maintained in the same transaction as order_line_view: units and lines ordered per SKU.
CREATE TABLE sku_orders (
    sku           text        PRIMARY KEY,
    order_lines   bigint      NOT NULL DEFAULT 0,
    units_ordered bigint      NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Source rows that were deleted: a late or replayed change of one never brings it back.
CREATE TABLE view_tombstones (
    source     text        NOT NULL,   -- the source table (orders, order_items, stock, reservations)
    key        text        NOT NULL,   -- its primary key, as text
    deleted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, key)
);
