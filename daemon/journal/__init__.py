"""The journal: one database (SQLite, or PostgreSQL shared by instances) holding everything the
daemon must never lose, read and written through one repository per table group."""

from daemon.journal.audit import AuditEntry, Verified
from daemon.journal.catalog import StoredBackup
from daemon.journal.db import JournalError
from daemon.journal.escalations import Ladder
from daemon.journal.incidents import Incident, IncidentExtras, MailContext
from daemon.journal.mail import HeldMail, OutboxMail
from daemon.journal.steps import StepRecord
from daemon.journal.store import Journal

__all__ = ["AuditEntry", "HeldMail", "Incident", "IncidentExtras", "Journal", "JournalError",
           "Ladder", "MailContext", "OutboxMail", "StepRecord", "StoredBackup", "Verified"]
