"""Executors: the runbook's rollback procedures as journaled, time-bounded steps."""
