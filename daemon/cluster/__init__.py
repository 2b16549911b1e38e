"""Cluster mode: several hosts share one root and one PostgreSQL (docs/cluster.md)."""
