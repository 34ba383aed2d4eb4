"""The journal: one database (SQLite, or PostgreSQL shared by instances) holding everything the
daemon must never lose, read and written through one repository per table group."""

from rollbackd.daemon.journal.audit import AuditEntry, Verified
from rollbackd.daemon.journal.catalog import StoredBackup
from rollbackd.daemon.journal.db import JournalError
from rollbackd.daemon.journal.escalations import Ladder
from rollbackd.daemon.journal.incidents import Incident, IncidentExtras, MailContext
from rollbackd.daemon.journal.mail import HeldMail, OutboxMail
from rollbackd.daemon.journal.steps import StepRecord
from rollbackd.daemon.journal.store import Journal

__all__ = ["AuditEntry", "HeldMail", "Incident", "IncidentExtras", "Journal", "JournalError",
           "Ladder", "MailContext", "OutboxMail", "StepRecord", "StoredBackup", "Verified"]
