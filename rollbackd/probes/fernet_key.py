"""fernet_key: the encryption key is readable, well-formed, and still decrypts a canary."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rollbackd.probes.base import AbsolutePath, BaseProbe, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


class FernetKeySettings(ProbeSettings):
    kind: Literal["fernet_key"] = "fernet_key"
    key_file: AbsolutePath
    """Absolute path of the file holding the key; only the path is kept, the key never is."""
    env_var: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """When set, key_file is an env file of KEY=VALUE lines and the key is this variable."""
    canary: str | None = None
    """A Fernet token made with the good key; the key must decrypt it."""
    canary_file: AbsolutePath | None = None
    """Absolute path of a file holding the canary token, instead of canary."""
    canary_plaintext: str | None = None
    """What the canary must decrypt to, when set; otherwise any successful decryption passes."""

    @model_validator(mode="after")
    def _one_canary(self) -> FernetKeySettings:
        if self.canary is not None and self.canary_file is not None:
            raise ValueError("give canary or canary_file, not both")
        if self.canary_plaintext is not None and self.canary is None and self.canary_file is None:
            raise ValueError("canary_plaintext needs canary or canary_file")
        return self


class KeyProblem(Exception):
    """The key is unusable; the message is safe to show and never contains the key."""


class CanaryUnreadable(Exception):
    """The probe's own canary file cannot be read: no evidence about the key."""


@dataclass(frozen=True)
class _Verdict:
    fingerprint: str
    canary_checked: bool


def fingerprint(key: str) -> str:
    """The first 12 hex digits of sha256 of the key text: names a key without revealing it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _key_text(s: FernetKeySettings) -> str:
    try:
        text = s.key_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyProblem(f"key file {str(s.key_file)!r} is missing") from None
    except OSError as exc:
        raise KeyProblem(f"cannot read key file {str(s.key_file)!r}: "
                         f"{exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise KeyProblem(f"key file {str(s.key_file)!r} is not UTF-8 text") from None
    if s.env_var is None:
        return text.strip()
    for line in text.splitlines():
        m = _ENV_LINE.match(line)
        if m and m.group(1) == s.env_var:
            value = m.group(2).strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value
    raise KeyProblem(f"{s.env_var} is not set in {str(s.key_file)!r}")


def _canary(s: FernetKeySettings) -> str | None:
    if s.canary_file is None:
        return s.canary
    try:
        return s.canary_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise CanaryUnreadable(f"cannot read canary file {str(s.canary_file)!r}: {why}") from None


def verify_key(s: FernetKeySettings) -> _Verdict:
    """Blocking (reads files), so called in a thread. Raises KeyProblem or CanaryUnreadable."""
    # Here, not at the top: a daemon without a key probe never loads cryptography for it.
    from cryptography.fernet import Fernet, InvalidToken

    key = _key_text(s)
    if not key:
        raise KeyProblem(f"key file {str(s.key_file)!r} holds no key")
    try:
        fernet = Fernet(key)
    except (ValueError, TypeError):
        env_line = _ENV_LINE.match(key.splitlines()[0])
        looks_env = s.env_var is None and env_line is not None and env_line.group(2).strip()
        hint = "; it looks like an env file, so set env_var" if looks_env else ""
        raise KeyProblem(f"key in {str(s.key_file)!r} is not a valid Fernet key "
                         f"({len(key)} characters, expected 44 url-safe base64){hint}") from None
    token = _canary(s)
    if token is None:
        return _Verdict(fingerprint(key), canary_checked=False)
    try:
        plain = fernet.decrypt(token.encode())
    except InvalidToken:
        raise KeyProblem(f"key {fingerprint(key)} cannot decrypt the canary") from None
    if s.canary_plaintext is not None and plain != s.canary_plaintext.encode():
        raise KeyProblem(f"key {fingerprint(key)} decrypts the canary to a different value "
                         f"({len(plain)} bytes)")
    return _Verdict(fingerprint(key), canary_checked=True)


class FernetKeyProbe(BaseProbe[FernetKeySettings]):
    kind: ClassVar[str] = "fernet_key"
    crash_message: ClassVar[bool] = False  # a message from deep inside could quote the key

    async def run(self, started: float) -> Observation:
        try:
            verdict = await asyncio.to_thread(verify_key, self.settings)
        except KeyProblem as exc:
            return self.fail(f"{exc}.", started, Symptom.KEY_INVALID)
        except CanaryUnreadable as exc:
            return self.error(f"{exc}.", started)
        what = "decrypts the canary" if verdict.canary_checked else "is a valid Fernet key"
        return self.ok(f"key {verdict.fingerprint} from {self.settings.key_file.name} {what}.",
                       started, verdict.fingerprint)
