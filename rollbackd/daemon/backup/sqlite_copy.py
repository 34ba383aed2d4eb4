"""The SQLite online backup, run in a child process: reading the database through a memory map
saves about a third of the CPU, and turns a disk error into SIGBUS, which then takes down only
that child, never the daemon (a damaged file cannot crash the daemon's SQLite either)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

# One backup step over every page: one read snapshot, so the copy is consistent. In WAL mode
# the app keeps writing meanwhile; in rollback-journal mode its writers wait (up to their busy
# timeout) until the copy is done. Never a plain cp of a live database. The copy needs no
# journal and no sync of its own: the store fsyncs it once when it is complete.
CHILD = r"""
import sqlite3, sys
from urllib.parse import quote
src, dest, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    source = sqlite3.connect("file:" + quote(src) + "?mode=ro", uri=True, timeout=timeout,
                             isolation_level=None)
    source.execute("PRAGMA mmap_size=%d" % (1 << 40))
    copy = sqlite3.connect(dest, isolation_level=None)
    for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE"):
        copy.execute("PRAGMA " + pragma)
    source.backup(copy, pages=-1)
    copy.close()
    source.close()
except sqlite3.Error as exc:
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    sys.stderr.write("%s\t%s\n" % (name, exc))
    sys.exit(3)
"""


class CopyFailed(Exception):
    def __init__(self, message: str, corrupt: bool) -> None:
        super().__init__(message)
        self.corrupt = corrupt
        """The database itself is damaged (as opposed to busy, full, or unreadable)."""


def backup_argv(src: Path, dest: Path, timeout: float) -> list[str]:
    # -I -S: the standard library only; nothing from the environment or site-packages.
    return [sys.executable, "-I", "-S", "-c", CHILD, str(src), str(dest), f"{timeout:g}"]


def outcome(returncode: int, stderr: str) -> None:
    """Raise CopyFailed unless the child succeeded."""
    if returncode == 0:
        return
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise CopyFailed(f"the backup process was killed by {name} (an I/O error reading "
                         "the database?)", corrupt=False)
    lines = stderr.strip().splitlines()
    name, _, message = (lines[-1] if lines else f"exit {returncode}").partition("\t")
    corrupt = name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
        w in message.lower() for w in ("malformed", "not a database", "corrupt"))
    raise CopyFailed(message or name, corrupt)


async def online_backup(src: Path, dest: Path, timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        *backup_argv(src, dest, timeout), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:  # the step's timeout, or shutdown: nothing may linger
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    outcome(proc.returncode or 0, err.decode(errors="replace"))


def online_backup_blocking(src: Path, dest: Path, timeout: float) -> None:
    """The same, for scripts (the benchmark)."""
    res = subprocess.run(backup_argv(src, dest, timeout), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=False)
    outcome(res.returncode, res.stderr)
