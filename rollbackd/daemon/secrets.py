"""Secrets from files or systemd credentials; the value never appears in repr, logs or reports."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SecretValue:
    source: str
    """Where it came from (a path), safe to show."""
    value: str = field(repr=False)

    def __str__(self) -> str:
        return f"<secret from {self.source}>"


def resolve_secret_path(name: str) -> Path:
    """An absolute path is used as is; a bare name is a systemd credential (LoadCredential=)."""
    path = Path(name)
    if path.is_absolute():
        return path
    if "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is neither an absolute path nor a credential name "
                         "(credential names contain no '/')")
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        raise ValueError(
            f"secret {name!r} is a relative name, which means a systemd credential, "
            "but $CREDENTIALS_DIRECTORY is not set; give an absolute path"
        )
    return Path(cred_dir) / path


MAX_SECRET_BYTES = 64 * 1024


def _read_small(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_SECRET_BYTES: /dev/zero, a FIFO or a huge file named
    by mistake is an error, not a hang or the daemon's memory."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = fh.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_SECRET_BYTES} bytes")
    return data


def load_secret(name: object) -> SecretValue:
    if isinstance(name, SecretValue):
        return name
    if not isinstance(name, str) or not name:
        raise ValueError("expected the path of a secret file")
    path = resolve_secret_path(name)
    try:
        text = _read_small(path).decode("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {str(path)!r} is not UTF-8 text") from None
    # One trailing newline is how editors save files; it is never part of a password.
    return SecretValue(str(path), text.removesuffix("\n").removesuffix("\r"))
