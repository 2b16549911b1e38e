-- Each fire of a schedule or of the rerun window, once per cluster. Every host computes
-- the due fires; the one whose INSERT makes the row fires (for a schedule, in the same
-- transaction as the request's row and job), the others find it there and do nothing.
-- fire_time is the cron's nominal time, never a host's clock reading, so every host
-- computes the same key.
CREATE TABLE schedule_fires (
    schedule    text        NOT NULL,  -- the job: schedule:<name>, or reruns
    fire_time   timestamptz NOT NULL,  -- nominal, from the cron and its time zone
    status      text        NOT NULL CHECK (status IN ('fired', 'missed')),
    claim_id    text,                  -- the request a schedule's fire produced
    host_id     text        NOT NULL,  -- the host that fired (or recorded the miss)
    cron        text        NOT NULL,  -- the cron and time zone the fire was computed
    timezone    text        NOT NULL,  -- from: a changed one starts afresh
    detail      jsonb,                 -- missed: late_seconds; reruns: what it did
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, fire_time)
);

-- What the rerun window produced from one settled run, once per cluster and for good:
-- a rerun of a failed run, or the deferred analysis of a copy run (or the note that
-- the failed run used up its attempts). Whichever window first inserts the row does it.
CREATE TABLE rerun_drops (
    kind        text        NOT NULL CHECK (kind IN ('rerun', 'analysis')),
    source      text        NOT NULL,  -- the run ID re-dropped, or analysed
    window_time timestamptz NOT NULL,  -- the window's fire (schedule_fires, reruns)
    status      text        NOT NULL CHECK (status IN ('dropped', 'exhausted')),
    name        text,                  -- the request's name as dropped
    claim_id    text,                  -- the request row it produced (requests)
    host_id     text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, source)
);
CREATE INDEX rerun_drops_claim ON rerun_drops (claim_id);
