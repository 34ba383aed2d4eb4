"""Policies: pure decisions from observations, history and time; no I/O here."""
