-- eda-outbox: chunked events (eda-claim-check's `CLAIM_CHECK=chunk`, for places without object
-- storage). A large payload is split into several rows written in the same transaction, same
-- key, consecutive; these columns become each row's `chunk-*` headers, so the in-process relay
-- and Debezium's Outbox Event Router publish identical chunks.
ALTER TABLE outbox
    ADD COLUMN chunk_message_id text,  -- header chunk-message-id: event id of the whole message
    ADD COLUMN chunk_index      text,  -- header chunk-index: 0-based position of this chunk
    ADD COLUMN chunk_count      text,  -- header chunk-count: chunks in the set
    ADD COLUMN chunk_size       text,  -- header chunk-size: bytes of the whole payload
    ADD COLUMN chunk_sha256     text;  -- header chunk-sha256: hex sha256 of the whole payload
