-- eda-idempotent-consumer: the last revision each consumer group applied per aggregate.
--
-- An event carries its aggregate's revision after the change (header `revision`). The runtime
-- applies an event only when it is newer than the row here, and raises the row in the same
-- transaction, so a late, reordered or redriven older event can never undo a newer one.
CREATE TABLE aggregate_revisions (
    consumer_group text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    revision       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, aggregate_type, aggregate_id)
);
-- Retention prunes by age, with the processed-event records.
CREATE INDEX aggregate_revisions_updated_at_idx ON aggregate_revisions (updated_at);
