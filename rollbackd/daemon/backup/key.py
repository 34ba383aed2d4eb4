"""Encryption-key backups: the key alone, 0600, optionally sealed with a passphrase; verified
as a valid Fernet key that decrypts the canary. The key never reaches a log or a message."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from rollbackd.daemon.backup.base import BackupFailed, BackupKind, BackupResult
from rollbackd.daemon.backup.envfile import parse
from rollbackd.daemon.backup.files import PRIVATE_FILE
from rollbackd.probes.fernet_key import fingerprint

MAGIC = b"rollbackd-key-backup 1 scrypt-fernet\n"
SCRYPT_N = 2**14


class KeyUnusable(Exception):
    """The key (or its backup) cannot be used; the message is safe to show: never the key."""


def read_key(file: Path, env_var: str | None) -> str:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyUnusable(f"key file {file} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyUnusable(f"cannot read key file {file}: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if env_var is None:
        key = text.strip()
    else:
        key = parse(text).get(env_var, "")
        if not key:
            raise KeyUnusable(f"{env_var} is not set in {file}")
    if not key:
        raise KeyUnusable(f"key file {file} holds no key")
    return key


def problem(key: str, canary: str | None) -> str | None:
    """None when key is a valid Fernet key that decrypts the canary; else why not (no secret)."""
    try:
        fernet = Fernet(key.encode())
    except (ValueError, TypeError, binascii.Error):
        return f"not a valid Fernet key ({len(key)} characters, expected 44 url-safe base64)"
    if canary is None:
        return None
    try:
        fernet.decrypt(canary.strip().encode())
    except InvalidToken:
        return f"key {fingerprint(key)} cannot decrypt the canary"
    return None


def _fernet(passphrase: str, salt: bytes) -> Fernet:
    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=8, p=1)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(passphrase.encode())))


def seal(key: str, passphrase: str | None) -> bytes:
    if passphrase is None:
        return key.encode() + b"\n"
    salt = os.urandom(16)
    token = _fernet(passphrase, salt).encrypt(key.encode())
    return MAGIC + base64.b64encode(salt) + b"\n" + token + b"\n"


def unseal(data: bytes, passphrase: str | None) -> str:
    if not data.startswith(MAGIC):
        return data.decode("utf-8", errors="replace").strip()
    if passphrase is None:
        raise KeyUnusable("the backup is sealed with a passphrase, but none is configured")
    try:
        salt_line, token = data[len(MAGIC):].split(b"\n", 2)[:2]
        return _fernet(passphrase, base64.b64decode(salt_line)).decrypt(token).decode()
    except (ValueError, InvalidToken, binascii.Error):
        raise KeyUnusable("the backup cannot be opened with the configured passphrase") from None


class KeyBackuper:
    kind: BackupKind = "key"

    def __init__(self, file: Path, env_var: str | None, canary: str | None,
                 canary_file: Path | None, passphrase: str | None) -> None:
        self.file = file
        self.env_var = env_var
        self._canary = canary
        self.canary_file = canary_file
        self._passphrase = passphrase
        self.suffix = ".key.sealed" if passphrase else ".key"

    def canary(self) -> str | None:
        if self.canary_file is None:
            return self._canary
        try:
            return self.canary_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KeyUnusable(f"cannot read canary file {self.canary_file}: {exc.strerror}") \
                from None

    def current(self) -> str:
        return read_key(self.file, self.env_var)

    async def backup(self, dest: Path) -> BackupResult:
        return await asyncio.to_thread(self._backup, dest)

    def _backup(self, dest: Path) -> BackupResult:
        try:
            key = self.current()
        except KeyUnusable as exc:
            raise BackupFailed(str(exc)) from None
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        try:
            os.write(fd, seal(key, self._passphrase))
            os.fsync(fd)
        finally:
            os.close(fd)
        return BackupResult({"fingerprint": fingerprint(key),
                             "sealed": self._passphrase is not None})

    def load(self, path: Path) -> str:
        """The key a backup holds; raises KeyUnusable when it is no usable key."""
        key = unseal(path.read_bytes(), self._passphrase)
        why = problem(key, self.canary())
        if why:
            raise KeyUnusable(why)
        return key

    async def verify(self, path: Path) -> str | None:
        try:
            await asyncio.to_thread(self.load, path)
        except KeyUnusable as exc:
            return str(exc)
        return None
