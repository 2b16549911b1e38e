"""The daemon's state behind one contract: SQLite under ``state/`` on one host,
PostgreSQL in cluster mode.

- ``abc``: the contract (``RequestStore``, ``CopyStore``, ``CheckpointStore``) and its
  errors; ``records``: the values it speaks;
- ``stores``: ``open_stores(config, layout, pool)`` picks the implementations;
- ``sqlite_requests``, ``sqlite_copies`` (+ ``daemon.checkpoint``, the run folder's
  journal): one host;
- ``pg_requests``, ``pg_copies``, ``pg_checkpoints``: the cluster, over ``pg`` (the
  pool and the versioned migrations, ``migrations/NNNN_name.sql``);
- ``leases``: copy key leases (waiting, renewing, fencing), over either.
"""
