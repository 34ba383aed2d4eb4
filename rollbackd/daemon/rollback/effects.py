"""Effect checks several executors share: a snapshot taken, a downgrade done, columns cleared."""

from __future__ import annotations

from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback.base import Effect, StepContext, absent, done, unknown


def snapshot_effect(store: BackupStore, ctx: StepContext, kind: str = "database") -> Effect:
    """A step that takes a verified snapshot for the incident (it skips when one exists)."""
    mine = [b for b in store.for_incident(kind, ctx.incident_id) if b.verified]
    if mine:
        return done(f"verified snapshot {mine[-1].describe()} of this incident is there")
    return absent(f"no verified {kind} snapshot of incident {ctx.incident_id}")


def downgrade_effect(now: str | None, target: str, ctx: StepContext) -> Effect:
    """An Alembic downgrade: alembic_version is the target, the failed revision, or neither."""
    if now == target:
        return done(f"alembic_version is the target revision {target}")
    before = ctx.plan.current.get("revision")
    if now is not None and now == before:
        return absent(f"alembic_version is still {now}")
    return unknown(f"alembic_version is {now or 'unreadable'}, neither the revision before "
                   f"({before or '?'}) nor the target {target}: the downgrade may have stopped "
                   "halfway")


def cleared_effect(left: dict[str, int]) -> Effect:
    """The key reset's clear: one transaction, so all columns are NULL or none of ours are."""
    rest = {c: n for c, n in left.items() if n}
    if not rest:
        return done("every encrypted column is NULL: " + (", ".join(left) or "no columns"))
    return absent("values are still there: " + ", ".join(f"{c}: {n} row(s)"
                                                         for c, n in rest.items()))
