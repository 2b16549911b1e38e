"""scanrelay: a daemon that turns request files dropped in an inbox into runs against
shelf-scan platform instances (copy, download, analyze)."""

__version__ = "0.1.0"
