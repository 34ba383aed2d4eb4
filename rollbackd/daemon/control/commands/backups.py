"""Backups by hand: take one now through the target's backup store, and list the catalog."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.backup.base import Backuper, BackupFailed, BackupFailure
from rollbackd.daemon.backup.schedule import BacksUp
from rollbackd.daemon.backup.store import DEFAULT_KEEP, BackupStore
from rollbackd.daemon.control.commands.args import monitor_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.journal import StoredBackup
from rollbackd.daemon.journal.db import ts

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace
    from rollbackd.daemon.monitor import TargetMonitor

KINDS = ("database", "key", "sessions")
_stores: weakref.WeakKeyDictionary[Any, dict[str, BackupStore]] = weakref.WeakKeyDictionary()


def _attached(executor: Any) -> BackupStore | None:
    try:
        found = executor.store
    except Exception:  # not attached (yet): the property refuses
        return None
    return found if isinstance(found, BackupStore) else None


def _store(d: DaemonFace, target: str, m: TargetMonitor) -> BackupStore:
    """The store the scheduler attached to the target's executors (one lock for scheduled and
    manual backups), else one of our own under the same directory."""
    for executor in m.components.values():
        if isinstance(executor, BacksUp) and (found := _attached(executor)) is not None:
            return found
    per_daemon = _stores.setdefault(d, {})
    if target not in per_daemon:
        settings = getattr(d.config.targets[target], "backups", None)
        keep = float(getattr(settings, "keep", DEFAULT_KEEP))
        per_daemon[target] = BackupStore(d.journal, d.config.daemon.state_dir / "backups",
                                         target, keep)
    return per_daemon[target]


def failed_backups(d: DaemonFace, target: str, m: TargetMonitor) -> dict[str, BackupFailure]:
    """Kinds whose last scheduled backup failed (none has succeeded since): `backups`, `status`."""
    return dict(_store(d, target, m).failures)


def _backupers(m: TargetMonitor, kind: str | None) -> list[Backuper]:
    found = [b for e in m.components.values() if isinstance(e, BacksUp) for b in e.backupers()]
    return [b for b in found if kind is None or b.kind == kind]


@command("backup", "back a target up now (kind: database, key or sessions; default all)")
async def _backup(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    kind = args.get("kind")
    if kind is not None and kind not in KINDS:
        raise CommandError("bad_args", f"kind must be one of {', '.join(KINDS)}")
    backupers = _backupers(m, kind)
    if not backupers:
        what = f"a {kind} backup method" if kind else "a backup method"
        raise CommandError("not_supported", (
            f"{target} has no component with {what}: none of its configured executors "
            f"({', '.join(m.components) or 'none'}) can be backed up; configure "
            f"[targets.{target}.database] or [targets.{target}.key]"))
    store = _store(d, target, m)
    taken = []
    for b in backupers:
        try:
            stored = await store.take(b, reason=f"manual by uid {peer.uid}")
        except BackupFailed as exc:
            raise CommandError("backup_failed", str(exc)) from None
        taken.append({"id": stored.id, "kind": stored.kind, "path": str(stored.path),
                      "size": stored.size, "sha256": stored.sha256,
                      "verified": stored.verified, "verify_error": stored.verify_error})
    return taken


@command("backups", "the backup catalog of a target, newest first")
async def _backups(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    target, m = monitor_arg(d, args)
    kind = args.get("kind")
    if kind is not None and kind not in KINDS:
        raise CommandError("bad_args", f"kind must be one of {', '.join(KINDS)}")
    # The failed attempt comes first (newest): no copy, so no id, path or checksum.
    failed = [{"id": None, "kind": k, "created_at": ts(f.at), "failed": f.reason}
              for k, f in failed_backups(d, target, m).items() if kind in (None, k)]
    return failed + [shown(b) for b in reversed(d.journal.backups.of(target, kind))]


def shown(b: StoredBackup) -> dict[str, Any]:
    """One catalog entry as `backups` replies it."""
    return {"id": b.id, "kind": b.kind, "created_at": ts(b.created_at), "size": b.size,
            "sha256": b.sha256, "verified": b.verified, "verify_error": b.verify_error,
            "path": str(b.path), "versions": dict(b.versions),
            "restore_tested_at": ts(b.restore_tested_at),
            "restore_test_error": b.restore_test_error}
