"""A SQLite restore's file work: stage a checked copy beside the live file while the app runs,
then swap it in with a hard link and renames, in well under a millisecond of a stopped app."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from glob import escape as glob_escape
from pathlib import Path

from rollbackd.daemon.backup.base import BackupRefused, StoredBackup
from rollbackd.daemon.backup.files import copy_hashed, free_bytes, fsync_dir, no_space, remove
from rollbackd.daemon.backup.sqlite import SIDE_FILES, check_copy
from rollbackd.daemon.rollback.base import StepFailed

log = logging.getLogger("rollbackd.rollback.sqlite")

SPACE_MARGIN = 1 << 20
"""Room left over after staging a copy, for the directory entry and the app's first writes."""


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def staged_path(path: Path, backup_id: int) -> Path:
    return path.with_name(f".{path.name}.restore-{backup_id}")


def stage(path: Path, b: StoredBackup, alembic_table: str) -> str:
    """Copy the backup beside the live file, fsync, check: all before the app is stopped.

    Raises StepFailed (nothing changed), or BackupRefused when the backup's bytes are not the
    ones that were verified.
    """
    tmp = staged_path(path, b.id)
    remove(tmp)
    free = free_bytes(tmp.parent)
    if free < b.size + SPACE_MARGIN:
        raise StepFailed(f"not enough space in {tmp.parent} to stage backup #{b.id}: it "
                         f"needs {_size(b.size + SPACE_MARGIN)}, {_size(free)} free; the "
                         "current database is untouched")
    try:
        digest = copy_hashed(b.path, tmp)
    except OSError as exc:
        why = "the disk filled up" if no_space(exc) else exc.strerror
        raise StepFailed(f"staging backup #{b.id} in {tmp.parent} failed ({why}); the "
                         "partial copy is removed and the current database is untouched") \
            from None
    if digest != b.sha256:
        remove(tmp)
        raise BackupRefused(f"checksum mismatch while staging: sha256 {digest[:12]}, "
                            f"cataloged {b.sha256[:12]}")
    problem = check_copy(tmp, alembic_table)
    if problem:
        remove(tmp)
        raise StepFailed(f"the staged copy of backup #{b.id} fails its check: {problem}")
    match_owner(path, tmp)
    fsync_dir(tmp.parent)
    rev = b.versions.get("alembic_revision")
    return (f"backup #{b.id} staged as {tmp.name} ({_size(b.size)}, sha256 {digest[:12]} "
            f"matches), integrity_check ok{f', revision {rev}' if rev else ''}")


def match_owner(path: Path, tmp: Path) -> None:
    """The restored file gets the owner and mode of the file it replaces: the app's."""
    try:
        st = os.stat(path)
        uid, gid, mode = st.st_uid, st.st_gid, st.st_mode & 0o7777
    except FileNotFoundError:
        st = os.stat(path.parent)
        uid, gid, mode = st.st_uid, st.st_gid, 0o600
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)


def kept_name(path: Path) -> Path:
    """`<name>.corrupted.<UTC time>`, with a counter if taken: a kept copy is never replaced."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.corrupted.{stamp}")
    candidate, n = base, 1
    while candidate.exists() or any(Path(f"{candidate}{s}").exists() for s in SIDE_FILES):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def kept_since(path: Path, since: datetime) -> Path | None:
    """The file a swap begun at or after `since` kept (by the time in its name), or None."""
    floor = since.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"{path.name}.corrupted."
    found = [p for p in path.parent.glob(f"{glob_escape(prefix)}*")
             if not p.name.endswith(SIDE_FILES)
             and p.name[len(prefix):len(prefix) + 16] >= floor]
    return max(found, default=None)


def _rename(src: Path, dest: Path) -> Callable[[], None]:
    return lambda: os.rename(src, dest)


def swap_in(path: Path, staged: Path) -> tuple[Path, list[str], float]:
    """The critical path, app stopped: keep the current file by a hard link under its
    `.corrupted.` name, move its -wal/-shm/-journal with it (replayed onto the restored file
    they would corrupt it), rename the staged copy into place, fsync the directory.

    A link and renames only: a few syscalls, however big the database. Undone on failure.
    Returns the kept name, the side files moved with it, and the seconds it took.
    """
    started = time.perf_counter()
    kept = kept_name(path)
    undo: list[Callable[[], None]] = []
    moved: list[str] = []
    try:
        if path.exists():
            os.link(path, kept)  # fails rather than overwrite an existing name
            undo.append(lambda: os.unlink(kept))
        for suffix in SIDE_FILES:
            side, dest = Path(f"{path}{suffix}"), Path(f"{kept}{suffix}")
            if side.exists():
                os.rename(side, dest)
                undo.append(_rename(dest, side))
                moved.append(suffix)
        os.rename(staged, path)
        fsync_dir(path.parent)
    except OSError:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                log.exception("path=%s status=undo-failed", path)
        raise
    return kept, moved, time.perf_counter() - started
