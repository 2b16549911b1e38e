-- Every target scan a copy recorded for a key (daemon/store/pg_copies.py), never
-- overwritten: the copy ledger keeps the newest copy of a key, this keeps them all, so
-- the post-run check (daemon/cluster/duplicates.py) sees a key copied twice.
CREATE TABLE copy_creates (
    source          text        NOT NULL,
    source_scan_id  bigint      NOT NULL,
    target          text        NOT NULL,
    target_store_id bigint      NOT NULL,
    target_scan_id  bigint      NOT NULL,
    run_id          text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, source_scan_id, target, target_store_id, target_scan_id)
);
CREATE INDEX copy_creates_run ON copy_creates (run_id);
