-- The copy ledger of the cluster (daemon/store/pg_copies.py): what was copied where,
-- across runs and hosts. One row per (key, marker): an intent (target_scan_id NULL)
-- or a copy; the newest copy of a key wins. Times are the server's.
CREATE TABLE copies (
    source          text        NOT NULL,
    target          text        NOT NULL,
    target_store_id bigint      NOT NULL,
    source_scan_id  bigint      NOT NULL,
    marker          text        NOT NULL,
    run_id          text        NOT NULL,
    target_scan_id  bigint,
    intent_at       timestamptz NOT NULL DEFAULT now(),
    copied_at       timestamptz,
    -- A run asks by (source, target, store) and a batch of source scans.
    PRIMARY KEY (source, target, target_store_id, source_scan_id, marker)
);

-- The upload IDs of each intended create: the creator's alone, so a later look-up
-- finds a create whose answer was lost even on a target that drops the marker.
CREATE TABLE intent_files (
    source          text     NOT NULL,
    target          text     NOT NULL,
    target_store_id bigint   NOT NULL,
    source_scan_id  bigint   NOT NULL,
    marker          text     NOT NULL,
    upload_ids      bigint[] NOT NULL,  -- as sent in the create's files
    seq             bigint   GENERATED ALWAYS AS IDENTITY,  -- the order they came in
    PRIMARY KEY (source, target, target_store_id, source_scan_id, marker, upload_ids)
);

-- Per target instance and marker field: did the target keep the marker of a create?
CREATE TABLE target_markers (
    target     text        NOT NULL,
    field      text        NOT NULL,
    kept       boolean     NOT NULL,
    checked_at timestamptz NOT NULL,
    PRIMARY KEY (target, field)
);

-- Copy key leases: one owner (one execution of a job) at a time may look a key up,
-- create its copy and record it. Free when absent or expired (by the server's clock).
CREATE TABLE copy_leases (
    source          text        NOT NULL,
    source_scan_id  bigint      NOT NULL,
    target          text        NOT NULL,
    target_store_id bigint      NOT NULL,
    owner           text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (source, source_scan_id, target, target_store_id)
);
