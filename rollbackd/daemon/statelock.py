"""One daemon per state directory: an exclusive lock on a file in it, held for the process's life.

A second `rollbackd run` on the same state directory would take over the control socket, run
the probes a second time and delete the socket when it exits, while the first went on unseen.
flock(2) is released by the kernel when the holder dies, even by kill -9: no stale lock to
clean up, and the PID written into the file is only there to tell people who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = "rollbackd.lock"


class StateDirInUse(Exception):
    """Another process holds the state directory's lock; the message names its PID."""

    def __init__(self, state_dir: Path, lock: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"state directory {state_dir} is in use by {holder} (lock {lock})")
        self.pid = pid


class StateLock:
    """The held lock; `release` (or the process's exit) lets the next daemon in."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock state_dir/rollbackd.lock without waiting; StateDirInUse if someone holds it."""
        path = state_dir / LOCK_NAME
        # Not O_TRUNC: the holder's PID stays readable until we own the lock. The descriptor is
        # not inherited (Python's default), so no child (git, pg_dump) keeps the lock alive.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise StateDirInUse(state_dir, path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays: unlinking it would let a starting daemon lock a new inode while a
        # third one still holds the old.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None


def _holder(fd: int) -> int | None:
    """The PID the holder wrote; None while it has not yet written it (it just locked)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
