-- eda-outbox: rows Kafka refuses for good (too large, invalid) are parked instead of blocking
-- the relay. A parked row stays unpublished with its reason; later rows of the same key on the
-- same topic wait behind it (per-key order), every other key keeps flowing.
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN parked_reason text;

-- What "is this key blocked?" looks up: only parked rows, normally none.
CREATE INDEX outbox_parked_idx ON outbox (topic, aggregate_id, id) WHERE parked_at IS NOT NULL;
