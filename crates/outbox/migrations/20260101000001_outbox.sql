-- eda-outbox: the transactional outbox table.
--
-- One row per event, written in the same transaction as the business change. Every message
-- header of the contract has its own column so that both relays (the in-process one and
-- Debezium's Outbox Event Router, which can only place named columns into headers) produce
-- identical messages.
CREATE TABLE outbox (
    -- Insertion order. NOT commit order: the relay never uses it as a cursor (see the README).
    id              bigserial   PRIMARY KEY,
    event_id        uuid        NOT NULL UNIQUE,      -- header event-id (UUIDv7)
    topic           text        NOT NULL,             -- destination topic
    aggregate_type  text        NOT NULL,             -- header aggregate-type
    aggregate_id    text        NOT NULL,             -- message key, header aggregate-id
    event_type      text        NOT NULL,             -- header event-type
    revision        text        NOT NULL,             -- header revision (aggregate revision after the change)
    occurred_at     text        NOT NULL,             -- header occurred-at (RFC 3339, as written)
    content_type    text        NOT NULL,             -- header content-type
    schema_version  text        NOT NULL,             -- header schema-version
    payload         text        NOT NULL,             -- message value, byte for byte
    -- context (eda-context fills these)
    traceparent     text,
    tracestate      text,
    baggage         text,
    request_id      text,
    user_id         text,
    correlation_id  text,
    causation_id    text,
    -- claim check (eda-claim-check fills these when the payload is offloaded)
    claim_check_location text,
    claim_check_sha256   text,
    claim_check_size     text,
    claim_check_codec    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);

-- What the relay scans: only unpublished rows, in insertion order. Stays small in steady state.
CREATE INDEX outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;
-- What clean-up scans.
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay when a transaction that wrote events commits (NOTIFY is delivered at commit,
-- and only if the transaction commits). One notification per statement, not per row.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eda_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
