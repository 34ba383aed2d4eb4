"""The key that seals the secret values of recorded release config: a Fernet key kept outside
the journal, as the audit key is (rollbackd/daemon/journal/audit.py). Never logged; errors name the file.

Fingerprints of values are HMAC-SHA256 under a key derived from it, so a fingerprint of a short
password cannot be tried against a word list by whoever reads the journal alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

CREDENTIAL = "config-key"
"""The key's name among systemd credentials ($CREDENTIALS_DIRECTORY/config-key)."""
KEY_FILE = "config.key"
"""Without that credential: the key's file in the state directory, made on first start."""


class ConfigKeyError(Exception):
    pass


def key_path(state_dir: Path) -> tuple[Path, bool]:
    """(where the key is, whether rollbackd owns that file and may generate it)."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    cred = Path(cred_dir) / CREDENTIAL if cred_dir else None
    if cred is not None and cred.is_file():
        return cred, False
    return state_dir / KEY_FILE, True


def load(state_dir: Path) -> bytes:
    path, own = key_path(state_dir)
    try:
        if own:
            if not path.exists():
                _generate(path)
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigKeyError(f"{path}: the config key must be readable by rollbackd "
                                     f"alone (mode {mode:o}; chmod 600 it)")
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigKeyError(f"{path}: cannot read the config key: {exc.strerror}") from None
    from cryptography.fernet import Fernet  # on first use: an idle daemon loads no crypto

    try:
        Fernet(key)
    except ValueError:
        raise ConfigKeyError(f"{path}: not a Fernet key (32 url-safe base64-encoded bytes, "
                             "e.g. from `python -c 'from cryptography.fernet import Fernet; "
                             "print(Fernet.generate_key().decode())'`)") from None
    return key


def _generate(path: Path) -> None:
    """Written whole under a temporary name and linked into place: two openers at once end up
    with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    from cryptography.fernet import Fernet

    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()


class Sealer:
    """Seals and opens secret values and fingerprints any value, under one config key."""

    def __init__(self, key: bytes) -> None:
        from cryptography.fernet import Fernet

        self._fernet: Fernet = Fernet(key)
        self._fp_key = hmac.new(key, b"rollbackd config fingerprint", hashlib.sha256).digest()

    # surrogateescape: a file that is not UTF-8 keeps its bytes through the record.
    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode(errors="surrogateescape")).decode()

    def open(self, token: str) -> str | None:
        """The value, or None when this key did not seal it (the key was replaced)."""
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode()).decode(errors="surrogateescape")
        except InvalidToken:
            return None

    def fingerprint(self, name: str, value: str) -> str:
        data = f"{name}\0{value}".encode(errors="surrogateescape")
        return hmac.new(self._fp_key, data, hashlib.sha256).hexdigest()[:32]
