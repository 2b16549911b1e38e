-- The cluster's hosts: each writes its heartbeat here; the views list them.
CREATE TABLE hosts (
    host_id      text PRIMARY KEY,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopping     boolean     NOT NULL DEFAULT false,
    info         jsonb       NOT NULL DEFAULT '{}'  -- running runs, instance health
);

-- Every request any host claimed: the SQLite ledger's columns, plus the request's own
-- bytes (a job runs from them, whichever host it lands on) and who claimed it.
CREATE TABLE requests (
    claim_id        text PRIMARY KEY,
    name            text             NOT NULL,
    profile         text,
    claimed_at      double precision NOT NULL,
    claimed_by      text             NOT NULL,  -- host_id
    processing_name text             NOT NULL,  -- its file in processing/
    body            bytea            NOT NULL,
    run_id          text UNIQUE,
    action          text,
    label           text,
    status          text             NOT NULL,
    finished_at     double precision,
    final_path      text,
    message         text,
    counts          jsonb,
    attempts        integer          NOT NULL DEFAULT 0,
    host_id         text,  -- the host running it now (or last)
    -- The job responsible for the request's current stage: its plan job while
    -- 'claimed', its settle job while 'settling' (while 'running', its batches' jobs).
    job_id          bigint,
    stage_attempts  integer          NOT NULL DEFAULT 0  -- executions of that stage
);
CREATE INDEX requests_status ON requests (status);
CREATE INDEX requests_claimed ON requests (claimed_at, claim_id);
CREATE INDEX requests_action_claimed ON requests (action, claimed_at);
CREATE INDEX requests_status_claimed ON requests (status, claimed_at);
CREATE INDEX requests_name ON requests (name, claimed_at);

-- The batches of a run: one job each; the last to finish defers the settle job.
CREATE TABLE batches (
    run_id     text    NOT NULL,
    number     integer NOT NULL,
    scan_ids   bigint[] NOT NULL,
    status     text    NOT NULL DEFAULT 'pending',  -- pending|running|done|abandoned
    result     jsonb,  -- the batch's HandlerResult (counts, failed items, extra)
    host_id    text,
    attempts   integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    job_id     bigint,  -- the batch's job (a new one if the sweep had to re-defer it)
    owner      text,    -- the execution that owns it: host_id:job_id:random (fencing)
    PRIMARY KEY (run_id, number)
);
CREATE INDEX batches_open ON batches (status) WHERE status IN ('pending', 'running');

-- Claim IDs unique across hosts by construction: the 6 hex of a claim ID (and of its
-- run ID) are this sequence's next value modulo 2^24, not random bits.
CREATE SEQUENCE claim_numbers;
