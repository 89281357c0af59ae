-- eda-idempotent-consumer: what a consumer group has already applied.

-- Dedupe by event id (the default): one row per applied event, written in the handler's
-- transaction. Catches redeliveries AND republished duplicates (same event id, new offset).
CREATE TABLE processed_events (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    "partition"    int         NOT NULL,
    "offset"       bigint      NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);
-- Retention prunes by age.
CREATE INDEX processed_events_processed_at_idx ON processed_events (processed_at);

-- Offsets kept in the database (the seed's topic-partition-offset as transaction id): the next
-- offset to apply per partition, written in the handler's transaction. One row per partition,
-- no retention needed; catches redeliveries, not republished duplicates.
CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    "partition"    int         NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, "partition")
);
