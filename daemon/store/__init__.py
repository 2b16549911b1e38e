"""The daemon's state behind one contract: SQLite under ``state/`` on one host,
PostgreSQL in cluster mode (``daemon/store/pg.py`` and its migrations)."""
