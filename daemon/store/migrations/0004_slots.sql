-- Connection slots (daemon/cluster/slots.py): an instance's max_connections holds
-- across the cluster. Each instance has one row per slot; a host calls the instance
-- only on slots whose lease it holds. Timed by the server's clock only.
CREATE TABLE slot_leases (
    instance   text    NOT NULL,
    slot       integer NOT NULL,  -- 0 .. max_connections - 1
    owner      text,              -- the leasing broker (one per process); NULL: free
    host_id    text,              -- the owner's host, for the views
    expires_at timestamptz,       -- free for anyone from then on, unless renewed
    PRIMARY KEY (instance, slot)
);
CREATE INDEX slot_leases_owner ON slot_leases (owner);

-- What each broker wants of each instance (its calls in flight plus waiting, at their
-- peak since its last tick): every host computes the fair shares from these rows, so
-- a host under continuous load gives slots back when another host waits.
CREATE TABLE slot_demand (
    instance   text        NOT NULL,
    owner      text        NOT NULL,
    host_id    text        NOT NULL,
    wanted     integer     NOT NULL,
    expires_at timestamptz NOT NULL,  -- a dead broker's demand is ignored from then on
    PRIMARY KEY (instance, owner)
);
