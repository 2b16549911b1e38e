"""Cluster mode: N hosts on one shared root, agreeing through PostgreSQL (procrastinate)."""
