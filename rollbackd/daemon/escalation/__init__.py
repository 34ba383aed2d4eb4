"""Escalation: telling people by email, through the journal's outbox, so nothing is lost."""
