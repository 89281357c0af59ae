-- eda-claim-check: the upload ledger, in the producer's database.
--
-- A row is written (and committed on its own) just before an object is uploaded, and deleted
-- by the business transaction that enqueues the event referring to it: the row disappears if
-- and only if that transaction commits. A row that stays (the transaction rolled back, or the
-- process died between upload and commit) names an orphan: the janitor deletes the object after
-- a grace period, then the row.
CREATE TABLE claim_check_uploads (
    bucket     text        NOT NULL,
    key        text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);
CREATE INDEX claim_check_uploads_created_at_idx ON claim_check_uploads (created_at);
