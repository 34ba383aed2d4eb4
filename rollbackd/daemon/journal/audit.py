"""The audit log of control commands: each row chained to the previous by a keyed hash.

Each row's hash is HMAC-SHA256, under a secret kept outside the journal, of the previous row's
hash and the row's contents. Whoever can write the journal but not read the key cannot edit a
row and recompute the chain: `verify` names the first row that does not check.

Rows written before the key existed (plain SHA-256) are signed with the key by the schema
migration that added it (journal schema 5), as far as their old chain was unbroken then; a row
still unsigned after that fails verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from rollbackd.daemon.clock import now_utc
from rollbackd.daemon.journal.db import Database, JournalError, dt, ts

CREDENTIAL = "audit-key"
"""The key's name among systemd credentials ($CREDENTIALS_DIRECTORY/audit-key)."""
KEY_FILE = "audit.key"
"""Without that credential: the key's file in the state directory, made on first start."""
MIN_KEY_BYTES = 32


def load_key(state_dir: Path) -> bytes:
    """The audit key: the systemd credential `audit-key` when the service has one, else
    state_dir/audit.key (mode 0600), generated when absent. Never logged: errors name the
    file only."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    cred = Path(cred_dir) / CREDENTIAL if cred_dir else None
    path, own = (cred, False) if cred is not None and cred.is_file() else (state_dir / KEY_FILE, True)
    try:
        if own:
            if not path.exists():
                _generate(path)
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise JournalError(f"{path}: the audit key must be readable by rollbackd alone "
                                   f"(mode {mode:o}; chmod 600 it)")
        key = path.read_bytes().strip()
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the audit key: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise JournalError(f"{path}: the audit key is {len(key)} bytes; it must be at least "
                           f"{MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)")
    return key


def _generate(path: Path) -> None:
    """A fresh key, written whole under a temporary name and linked into place, so instances
    starting at once on one state directory all end up with the same one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another opener was first: theirs holds
            os.link(tmp, path)
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def plain_digest(prev_hash: str, at: str, uid: int | None, pid: int | None, cmd: str,
                 args_json: str, outcome: str) -> str:
    """A row's hash before the chain was keyed (schema < 5)."""
    return hashlib.sha256(
        json.dumps([prev_hash, at, uid, pid, cmd, args_json, outcome]).encode()).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    uid: int | None
    pid: int | None
    cmd: str
    args: Any
    """The request's arguments as audited (secrets redacted by the caller)."""
    outcome: str


class Verified(NamedTuple):
    checked: int
    """Rows that verify, before the first broken one."""
    broken: int | None
    """The id of the first row that does not verify; None: the whole chain holds."""
    why: str


class AuditLog:
    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self._key = key
        self.key_id = hmac.new(key, b"rollbackd audit key id", hashlib.sha256).hexdigest()[:16]
        """Names the key in each row without revealing it: rows signed by another instance's
        key are told apart from edited ones."""

    def __repr__(self) -> str:  # never the key
        return f"AuditLog(key_id={self.key_id})"

    def digest(self, prev_hash: str, at: str, uid: int | None, pid: int | None, cmd: str,
               args_json: str, outcome: str) -> str:
        msg = json.dumps([prev_hash, at, uid, pid, cmd, args_json, outcome, self.key_id])
        return hmac.new(self._key, msg.encode(), hashlib.sha256).hexdigest()

    def record(self, uid: int | None, pid: int | None, cmd: str, args: dict[str, Any],
               outcome: str) -> None:
        at = ts(now_utc()) or ""
        args_json = json.dumps(args, sort_keys=True, default=str)
        with self.db.tx() as db:
            prev = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            prev_hash = prev[0] if prev else ""
            db.execute(
                "INSERT INTO audit (at, uid, pid, cmd, args, outcome, prev_hash, hash, key_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, uid, pid, cmd, args_json, outcome, prev_hash,
                 self.digest(prev_hash, at, uid, pid, cmd, args_json, outcome), self.key_id),
            )

    def recent(self, limit: int = 50) -> list[AuditEntry]:
        """The newest rows, newest first."""
        rows = self.db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry(r["id"], dt(r["at"]) or now_utc(), r["uid"], r["pid"], r["cmd"],
                           json.loads(r["args"]), r["outcome"]) for r in rows]

    def verify(self) -> Verified:
        prev_hash, checked = "", 0
        for r in self.db.execute("SELECT * FROM audit ORDER BY id"):
            why = self._broken(r, prev_hash)
            if why:
                return Verified(checked, r["id"], why)
            prev_hash, checked = r["hash"], checked + 1
        return Verified(checked, None, "")

    def _broken(self, r: sqlite3.Row, prev_hash: str) -> str:
        if r["key_id"] is None:
            return ("it is not signed with the audit key: rewritten without the key, or left "
                    "unsigned because the old, unkeyed chain was already broken here")
        if r["prev_hash"] != prev_hash:
            return ("its link to the previous row does not match (a row before it was removed "
                    "or rewritten)")
        fields = (r["prev_hash"], r["at"], r["uid"], r["pid"], r["cmd"], r["args"], r["outcome"])
        if r["key_id"] != self.key_id:
            return (f"it was signed with another audit key (key id {r['key_id']}, this "
                    f"instance has {self.key_id}): edited, or every instance sharing the "
                    "journal needs the same audit-key credential")
        if not hmac.compare_digest(self.digest(*fields), r["hash"]):
            return "its contents do not match its hash (edited)"
        return ""

    def sign_legacy(self) -> int:
        """Sign the rows hashed before the key existed, inside the caller's transaction (the
        migration's): as far as their plain chain holds, so no earlier edit is laundered.
        Returns how many were signed."""
        plain_prev, new_prev, signed = "", "", 0
        for r in self.db.execute("SELECT * FROM audit ORDER BY id").fetchall():
            fields = (r["at"], r["uid"], r["pid"], r["cmd"], r["args"], r["outcome"])
            if r["key_id"] is not None or r["prev_hash"] != plain_prev \
                    or plain_digest(plain_prev, *fields) != r["hash"]:
                break
            new_hash = self.digest(new_prev, *fields)
            self.db.execute("UPDATE audit SET prev_hash = ?, hash = ?, key_id = ? WHERE id = ?",
                            (new_prev, new_hash, self.key_id, r["id"]))
            plain_prev, new_prev, signed = r["hash"], new_hash, signed + 1
        return signed
