"""Lifecycle execution: safe moves, quarantine, purge, recovery after a crash."""
