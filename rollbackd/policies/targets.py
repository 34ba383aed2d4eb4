"""What each component rolls back to: a known-good version, a verified backup, a revision."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from rollbackd.policies.ledger import LedgerEntry, rollback_target
from rollbackd.policies.plans import Capabilities, Capability, Component


@dataclass(frozen=True)
class BackupEntry:
    id: int
    created_at: datetime
    verified: bool
    checksum_ok: bool = True
    alembic_revision: str | None = None
    writes_since: int | None = None
    """Writes made since this backup (what a restore would lose), when it could be counted."""
    incident: int | None = None
    """The incident this backup was taken for (its current state before a change), if any."""


@dataclass(frozen=True)
class Facts:
    """What the daemon knows about a target at decision time; gathered by I/O, used purely."""

    current_version: str | None = None
    current_revision: str | None = None
    current_key: str | None = None
    ledger: tuple[LedgerEntry, ...] = ()
    backups: tuple[BackupEntry, ...] = ()
    key_backups: tuple[BackupEntry, ...] = ()
    session_backups: tuple[BackupEntry, ...] = ()
    damaged: frozenset[Component] = frozenset()
    """Whose data the failing probes found damaged or lost (database, sessions); empty: the
    database, the only data store an integrity probe watched before Redis was judged."""
    capabilities: Capabilities = field(default_factory=dict)
    onset: datetime | None = None


def deployment_target(f: Facts) -> LedgerEntry | None:
    return rollback_target(list(f.ledger), f.current_version, f.current_key)


def downgrade_revision(f: Facts) -> str | None:
    """The known-good schema revision when a migration ran since, else None."""
    good = [e for e in f.ledger if e.known_good]
    if not good or f.current_revision is None:
        return None
    # The newest known-good state decides; if its revision is unknown, nothing shows that a
    # migration ran since, and an older entry's revision would downgrade too far.
    newest = max(good, key=lambda e: e.known_good_at or e.first_seen)
    rev = newest.alembic_revision
    return rev if rev is not None and rev != f.current_revision else None


def _before_onset(f: Facts, backups: tuple[BackupEntry, ...]) -> BackupEntry | None:
    # A backup taken for an incident holds the state that incident found broken (a snapshot at
    # the bad revision, a damaged file): evidence, never a later restore's target.
    usable = [b for b in backups if b.verified and b.checksum_ok and b.incident is None
              and (f.onset is None or b.created_at < f.onset)]
    return max(usable, key=lambda b: b.created_at, default=None)


def restore_backup(f: Facts) -> BackupEntry | None:
    """The newest verified backup taken before the incident's onset whose checksum holds."""
    return _before_onset(f, f.backups)


def sessions_backup(f: Facts) -> BackupEntry | None:
    """The newest verified snapshot of the sessions and tokens taken before the loss."""
    return _before_onset(f, f.session_backups)


def damaged(f: Facts, component: Component) -> bool:
    if not f.damaged:
        return component is Component.DATABASE
    return component in f.damaged


def key_backup(f: Facts) -> BackupEntry | None:
    usable = [b for b in f.key_backups if b.verified and b.checksum_ok]
    return max(usable, key=lambda b: b.created_at, default=None)


def can(f: Facts, capability: Capability) -> bool:
    return bool(f.capabilities.get(capability))
