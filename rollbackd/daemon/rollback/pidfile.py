"""The app's process as its pidfile names it: whether it runs, and since when (from /proc)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rollbackd.daemon.rollback.base import Process


def pidfile_process(path: Path) -> Process:
    """Never raises. A missing pidfile or a dead pid: not running (the caller looks twice,
    since a restart removes the pidfile for a moment)."""
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        return Process(False, None, f"no pidfile {path}")
    except (OSError, ValueError) as exc:
        return Process(None, None, f"pidfile {path} unreadable: {type(exc).__name__}")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # After the command's closing parenthesis: field 3 (state) ... field 22 (starttime).
        fields = stat.rsplit(")", 1)[1].split()
        state, start_ticks = fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return Process(False, None, f"pid {pid} (from {path}) is gone")
    if state in ("Z", "X"):
        return Process(False, None, f"pid {pid} (from {path}) exited")
    # starttime counts clock ticks since boot on the boot-time clock (suspend included).
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    return Process(True, max(0.0, age), f"pid {pid}")
