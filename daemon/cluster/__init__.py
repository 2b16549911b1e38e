"""Cluster mode: several hosts share one root and agree through PostgreSQL."""
