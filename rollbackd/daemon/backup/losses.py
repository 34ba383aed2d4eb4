"""What a restore would lose: the writes made since the backup the decision would restore."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from rollbackd.daemon.backup.base import CountsLosses
from rollbackd.policies.plans import Component
from rollbackd.policies.targets import BackupEntry, Facts, restore_backup


async def with_losses(components: Mapping[Component, Any], backups: tuple[BackupEntry, ...],
                      onset: datetime | None) -> tuple[BackupEntry, ...]:
    """The backups, the one a restore would use carrying writes_since (None: uncountable)."""
    counter = components.get(Component.DATABASE)
    if not isinstance(counter, CountsLosses):
        return backups
    candidate = restore_backup(Facts(backups=backups, onset=onset))
    if candidate is None:
        return backups
    lost = await counter.writes_since(candidate.id)
    return tuple(replace(b, writes_since=lost) if b.id == candidate.id else b for b in backups)
