"""The journal: one SQLite (WAL) database holding everything the daemon must never lose."""

from daemon.journal.store import Incident, Journal, JournalError, StepRecord

__all__ = ["Incident", "Journal", "JournalError", "StepRecord"]
