"""One config file as a release records it: its exact text as parts, secret values sealed (or
fingerprinted only), and back to the exact bytes; and which names differ, never their values.

A record is JSON-able: {"path", "kind", "sha256", "missing", "parts", "names"}. `parts` put
together give the file byte for byte: ["t", text] is kept as written, ["s", name, token, fp] is a
secret value (token: Fernet, or null when only its fingerprint `fp` was kept). `names` maps each
name to the fingerprint of its value, for saying what changed back without any value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollbackd.daemon.rollback.config_key import Sealer

KINDS = ("env", "config", "secret")
# KEY=VALUE lines of an env file (systemd EnvironmentFile=, docker --env-file, dotenv).
_ENV = re.compile(r"^(\s*(?:export\s+)?)([A-Za-z_][A-Za-z0-9_]*)(\s*=\s*)(.*?)(\s*)$")
# `name = value` / `name: value` lines of TOML, INI, YAML or properties files.
_CONFIG = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_.-]*)(\s*[=:]\s*)(.*?)(\s*)$")


@dataclass(frozen=True)
class Unrestorable(Exception):
    """Secret values of which only a fingerprint was kept and which the file no longer holds."""

    names: tuple[str, ...]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _lines(kind: str, text: str) -> list[tuple[str, str | None, str]]:
    """(text before the value, name or None, value); text after a value is a part of its own."""
    pattern = _ENV if kind == "env" else _CONFIG
    out: list[tuple[str, str | None, str]] = []
    for raw in text.splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        end = raw[len(body):]
        m = pattern.match(body)
        if m is None or body.lstrip().startswith(("#", ";", "[")):
            out.append((raw, None, ""))
            continue
        out.append((m.group(1) + m.group(2) + m.group(3), m.group(2), m.group(4)))
        out.append((m.group(5) + end, None, ""))
    return out


def values(kind: str, name: str, text: str) -> dict[str, str]:
    """name -> value of the file (a secret file is one value under its own name)."""
    if kind == "secret":
        return {name: text}
    return {n: v for _, n, v in _lines(kind, text) if n is not None}


def capture(path: Path, kind: str, secret: Callable[[str], bool], sealer: Sealer,
            encrypt: bool) -> dict[str, Any]:
    """The record of `path` as it is now."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"path": str(path), "kind": kind, "missing": True, "sha256": None, "parts": [],
                "names": {}}
    text = data.decode("utf-8", errors="surrogateescape")
    parts: list[list[Any]] = []

    def sealed(name: str, value: str) -> list[Any]:
        fp = sealer.fingerprint(name, value)
        return ["s", name, sealer.seal(value) if encrypt else None, fp]

    if kind == "secret":
        parts.append(sealed(path.name, text))
    else:
        for before, name, value in _lines(kind, text):
            parts.append(["t", before])
            if name is not None and secret(name):
                parts.append(sealed(name, value))
            elif name is not None:
                parts.append(["t", value])
    names = {n: sealer.fingerprint(n, v)
             for n, v in values(kind, path.name, text).items()}
    return {"path": str(path), "kind": kind, "missing": False, "sha256": sha256(data),
            "parts": [p for p in parts if p != ["t", ""]], "names": names}


def render(record: dict[str, Any], sealer: Sealer, current: str | None) -> bytes | None:
    """The recorded bytes (None: the file did not exist). A secret kept only as a fingerprint
    is taken from the current file when it still holds that very value; else Unrestorable."""
    if record["missing"]:
        return None
    now = values(record["kind"], Path(record["path"]).name, current) if current is not None \
        else {}
    out: list[str] = []
    lost: list[str] = []
    for part in record["parts"]:
        if part[0] == "t":
            out.append(part[1])
            continue
        _, name, token, fp = part
        value = sealer.open(token) if token is not None else None
        if value is None and name in now and sealer.fingerprint(name, now[name]) == fp:
            value = now[name]
        if value is None:
            lost.append(name)
            continue
        out.append(value)
    if lost:
        raise Unrestorable(tuple(dict.fromkeys(lost)))
    return "".join(out).encode("utf-8", errors="surrogateescape")


CHANGED, REMOVED, ADDED = "changed", "removed", "added"
"""How a name differs now from the record: its value changed, it was removed or added since."""


def name_changes(record: dict[str, Any], sealer: Sealer, current: str | None
                 ) -> list[tuple[str, str]]:
    """(name, CHANGED | REMOVED | ADDED) of the current file against the record; names only.
    A whole file that came or went is one entry named "(file)"."""
    if record["missing"]:
        return [] if current is None else [("(file)", ADDED)]
    if current is None:
        return [("(file)", REMOVED)]
    now = {n: sealer.fingerprint(n, v) for n, v in
           values(record["kind"], Path(record["path"]).name, current).items()}
    then: dict[str, str] = record["names"]
    out = [(n, CHANGED) for n in then if n in now and now[n] != then[n]]
    out += [(n, REMOVED) for n in then if n not in now]
    out += [(n, ADDED) for n in now if n not in then]
    return out


_BACK = {CHANGED: "{}", REMOVED: "{} (put back)", ADDED: "{} (removed: added since)"}


def names_changed(record: dict[str, Any], sealer: Sealer, current: str | None) -> list[str]:
    """What restoring the record changes back, by name only: "NAME" (value changed back),
    "NAME (put back)", "NAME (removed: added since)"."""
    return [_BACK[how].format(name) for name, how in name_changes(record, sealer, current)]
