-- eda-idempotent-consumer: chunks of large messages, kept until their set is complete.
--
-- A producer without object storage splits a large payload into several records (same key,
-- consecutive, `chunk-*` headers). Each chunk is stored here in the same transaction as the
-- consumer's offset/dedupe records, so a crash between chunks loses nothing and a redelivered
-- chunk is ignored (primary key). The last chunk's transaction reassembles the payload, runs the
-- handler once and deletes the set. A set still incomplete after the chunk timeout goes to the
-- dead-letter topic with its reason. Every consumer group keeps its own parts.
CREATE TABLE chunk_parts (
    consumer_group text        NOT NULL,
    message_id     uuid        NOT NULL,  -- header chunk-message-id: the whole message's event id
    chunk_index    integer     NOT NULL,  -- header chunk-index (0-based)
    chunk_count    integer     NOT NULL,  -- header chunk-count
    total_size     bigint      NOT NULL,  -- header chunk-size: bytes of the whole payload
    sha256         text        NOT NULL,  -- header chunk-sha256: of the whole payload
    topic          text        NOT NULL,  -- where this chunk was read (for its dead letter)
    "partition"    integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    record_key     bytea,
    headers        jsonb       NOT NULL,  -- the chunk's headers, [[name, value], ...]
    payload        bytea       NOT NULL,  -- this chunk's slice of the payload
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id, chunk_index)
);
-- What the expiry sweep scans.
CREATE INDEX chunk_parts_received_at_idx ON chunk_parts (consumer_group, received_at);
