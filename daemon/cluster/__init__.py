"""Cluster mode: several hosts on one shared root, agreeing through PostgreSQL."""
