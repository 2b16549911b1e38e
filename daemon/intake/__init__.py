"""Intake: noticing request files (watcher), checking and claiming them (claim)."""
