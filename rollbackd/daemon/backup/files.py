"""File plumbing for backups and restores: private modes, fsync, hashing copies, free space."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

CHUNK = 4 << 20
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create path (and parents) and make it 0700: backups hold the app's data and keys."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def make_private(path: Path) -> None:
    """0600 for a file; 0700 for a directory and 0600/0700 for everything in it."""
    if not path.is_dir():
        os.chmod(path, PRIVATE_FILE)
        return
    os.chmod(path, PRIVATE_DIR)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), PRIVATE_DIR)
        for f in files:
            os.chmod(os.path.join(root, f), PRIVATE_FILE)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in `path` durable."""
    fsync_file(path)


def fsync_tree(path: Path) -> None:
    if not path.is_dir():
        fsync_file(path)
        return
    for root, _, files in os.walk(path):
        for f in files:
            fsync_file(Path(root) / f)
        fsync_dir(Path(root))


def _file_sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def checksum(path: Path) -> tuple[str, int]:
    """sha256 and size of a file; of a directory, sha256 over its sorted (name, sha256) list."""
    if not path.is_dir():
        return _file_sha256(path)
    h, total = hashlib.sha256(), 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest, size = _file_sha256(file)
        h.update(f"{file.relative_to(path).as_posix()}\0{digest}\n".encode())
        total += size
    return h.hexdigest(), total


def copy_hashed(src: Path, dest: Path) -> str:
    """Copy src to a new file dest (0600), fsync it, and return the sha256 of what was written.

    Hashing the bytes as they are copied proves the restored file is the verified backup.
    On any error dest is removed, so a failed copy leaves nothing behind.
    """
    h = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb", closefd=False) as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)
    return h.hexdigest()


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
