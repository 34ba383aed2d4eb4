"""Secret scrubbing for everything rollbackd writes for people: mails, digests, reports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel

from rollbackd.daemon.secrets import SecretValue

MASK = "<redacted>"
_MIN_LEN = 4
"""Shorter values are not scrubbed: masking every 'ab' would garble the text, not protect it."""

# Shapes a secret can have even when its value is not known here (a DSN from an app's own
# environment that ends up in an error message, a Fernet key in evidence).
_PATTERNS = (
    (re.compile(r"(?P<keep>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)", re.I), r"\g<keep>***"),
    (re.compile(r"(?P<keep>\b(?:password|passwd|pwd|secret|token)\s*[=:]\s*)[^\s,;&'\"]+", re.I),
     r"\g<keep>***"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])"), MASK),
)

_known: set[str] = set()
"""Every secret value of every config this process loaded. Process-wide on purpose: the report
writer is called from places that have no config, and a secret once known stays a secret."""


def _secret_values(value: Any) -> Iterator[str]:
    if isinstance(value, SecretValue):
        yield value.value
        yield from _parts(value.value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_values(getattr(value, name))
    elif isinstance(value, dict):
        for v in value.values():
            yield from _secret_values(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _secret_values(v)


def _parts(secret: str) -> Iterator[str]:
    """A DSN's password alone: an error message may quote it without the rest of the DSN."""
    try:
        password = urlsplit(secret.strip()).password
    except ValueError:
        password = None
    if password:
        yield password
        yield unquote(password)
    for m in re.finditer(r"\bpassword\s*=\s*'?([^\s']+)", secret):
        yield m.group(1)


def remember(config: Any) -> None:
    """Learn the secrets of a loaded config (the SMTP password, DSNs, ...)."""
    _known.update(v for v in _secret_values(config) if len(v) >= _MIN_LEN)


def redact(text: str, extra: frozenset[str] = frozenset()) -> str:
    # Longest first, so a DSN is masked whole before its password alone is looked for.
    for secret in sorted(_known | {e for e in extra if len(e) >= _MIN_LEN}, key=len,
                         reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(value: Any) -> Any:
    """`redact` over every string in JSON-like data (a report, evidence)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value
