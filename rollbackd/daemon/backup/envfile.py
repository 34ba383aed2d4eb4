"""KEY=VALUE env files (systemd EnvironmentFile=): read them, replace one variable atomically."""

from __future__ import annotations

import os
import re
from pathlib import Path

from rollbackd.daemon.backup.files import fsync_dir

_LINE = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=)(.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and not line.lstrip().startswith("#"):
            env[m.group(2)] = _unquote(m.group(4))
    return env


def read_env(path: Path) -> dict[str, str]:
    return parse(path.read_text(encoding="utf-8"))


def with_value(text: str, name: str, value: str) -> str:
    """text with every `name=` line set to value (appended when missing), other lines as they are."""
    lines, found = [], False
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(2) == name:
            line, found = f"{m.group(1)}{name}{m.group(3)}{value}", True
        lines.append(line)
    if not found:
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def replace_file(path: Path, data: bytes) -> None:
    """Write data to path atomically (temp file beside it, fsync, rename), keeping its mode and
    owner: a crash leaves either the old file or the new one, never half of either."""
    try:
        st = os.stat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o600, None
    tmp = path.with_name(f".{path.name}.rollbackd-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, path)
    fsync_dir(path.parent)
