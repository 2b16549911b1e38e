-- Checkpoint records of the cluster's runs (daemon/store/pg_checkpoints.py): the
-- finished steps of a run (batch 0) or of one of its batches (1, 2, ...), the latest
-- record of a key wins. A record counts once its insert has committed.
CREATE TABLE checkpoints (
    run_id      text        NOT NULL,
    batch       integer     NOT NULL DEFAULT 0,
    key         text        NOT NULL,
    record      jsonb       NOT NULL,  -- {"key": key, ...data}
    seq         bigint      GENERATED ALWAYS AS IDENTITY,  -- the order keys came in
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, batch, key)
);
