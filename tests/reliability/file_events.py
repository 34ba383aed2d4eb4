"""Counts files written into place in a directory, from the kernel's own record (inotify).

A key write replaces the file atomically (a temp file created, then renamed over it): one
IN_MOVED_TO event per write, whatever process made it and whether or not its journal says so.
Read at the end, the kernel's queue (16,384 events by default) holds every rename since the
watch began. The kernel merges an event into the unread one before it when both are the same
(two renames onto one name in a row would count once), so creations are watched too: the temp
file's IN_CREATE between two renames keeps them apart.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections import Counter
from pathlib import Path

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class RenamesInto:
    """`watch(dir)`, then `counts()`: file name -> how many times a file was renamed onto it."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}
        self._seen: Counter[Path] = Counter()

    def watch(self, directory: Path) -> RenamesInto:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                            IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._dirs[wd] = directory
        return self

    def counts(self) -> Counter[Path]:
        """Every file renamed into a watched directory since the watch began, by path."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return Counter(self._seen)
            offset = 0
            while offset < len(data):
                wd, mask, _, size = HEADER.unpack_from(data, offset)
                name = data[offset + HEADER.size:offset + HEADER.size + size].rstrip(b"\0")
                offset += HEADER.size + size
                assert not mask & IN_Q_OVERFLOW, "inotify queue overflowed: events were lost"
                if mask & IN_MOVED_TO:
                    self._seen[self._dirs[wd] / os.fsdecode(name)] += 1

    def close(self) -> None:
        os.close(self.fd)
