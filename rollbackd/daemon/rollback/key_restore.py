"""Encryption-key restore: the newest valid key backup, re-verified, written back; app restart.

The key itself never appears in a log line, a step detail or the evidence: only its
fingerprint (sha256[:12]) does.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from cryptography.fernet import Fernet

from rollbackd.daemon.backup.base import BackupFailed, BackupRefused
from rollbackd.daemon.backup.envfile import replace_file, with_value
from rollbackd.daemon.backup.key import KeyBackuper, KeyUnusable, problem
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    StepContext,
    StepFailed,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.data_settings import KeySettings
from rollbackd.daemon.rollback.receipts import command_effect, run_recorded
from rollbackd.daemon.rollback.store_wiring import StoreWiring
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec
from rollbackd.probes.fernet_key import fingerprint

KEY = Component.KEY


class KeyExecutor(StoreWiring):
    component: ClassVar[Component] = KEY
    backend: ClassVar[str] = "fernet"
    backuper: KeyBackuper

    def __init__(self, settings: KeySettings) -> None:
        self.settings = settings
        passphrase = settings.passphrase_file.value if settings.passphrase_file else None
        self.backuper = KeyBackuper(settings.file, settings.env_var, settings.canary,
                                    settings.canary_file, passphrase)
        self._store: BackupStore | None = None
        steps = [StepSpec("restore_key", idempotent=True, timeout=60, component=KEY)]
        if settings.restart:
            # A restart cut off halfway leaves the app in an unknown state: a person decides.
            steps.append(StepSpec("restart_app", idempotent=False,
                                  timeout=settings.command_timeout, component=KEY))
        self.steps = tuple(steps)
        # A second fresh key after the app has restarted on the first would strand whatever it
        # encrypted since: an interrupted write waits for a person.
        self.replace_steps = (StepSpec("new_key", idempotent=False, timeout=60, destructive=True,
                                       component=KEY), *steps[1:])

    def capabilities(self) -> Capabilities:
        caps: dict[Capability, tuple[StepSpec, ...]] = {Capability.KEY_RESTORE: self.steps}
        if self.settings.canary is None:  # an inline canary could never pass with a fresh key
            caps[Capability.KEY_REPLACE] = self.replace_steps
        return caps

    def _current(self) -> tuple[str | None, str | None]:
        """(fingerprint, problem) of the key in place now."""
        try:
            key = self.backuper.current()
            return fingerprint(key), problem(key, self.backuper.canary())
        except KeyUnusable as exc:
            return None, str(exc)

    async def current_version(self) -> str | None:
        fp, _ = await asyncio.to_thread(self._current)
        return fp

    async def evidence(self) -> dict[str, Any]:
        fp, why = await asyncio.to_thread(self._current)
        found: dict[str, Any] = {"file": str(self.settings.file), "env_var": self.settings.env_var,
                                 "fingerprint": fp, "problem": why}
        if self._store is not None:
            newest = self._store.newest_verified("key")
            found["newest_verified_backup"] = newest.describe() if newest else None
        return found

    async def backup_current(self, ctx: StepContext) -> str:
        try:
            b = await self.store.take(self.backuper, f"incident-{ctx.incident_id}",
                                      ctx.incident_id)
        except BackupFailed as exc:
            # Nothing readable to keep (a missing or unreadable key): a restore loses nothing.
            return f"current key not backed up: {exc}"
        return f"current key backed up as {b.describe()}"

    async def _load(self, ctx: StepContext) -> tuple[int, str]:
        """The key of the plan's backup, after its checksum, the canary and validity held."""
        backup_id = ctx.backup_of(KEY)
        try:
            b = await self.store.checked(backup_id, "key")
            key = await asyncio.to_thread(self.backuper.load, b.path)
        except BackupRefused as exc:
            raise StepFailed(str(exc)) from None
        except KeyUnusable as exc:
            found = self.store.get(backup_id)
            if found is not None:
                self.store.mark_unusable(found, str(exc))
            raise StepFailed(f"key backup #{backup_id} is no longer usable: {exc}; refusing to "
                             "restore it") from None
        return backup_id, key

    async def verify_target(self, ctx: StepContext) -> str:
        if "new_key" in ctx.plan.step_names:
            return "no usable key backup is left: a fresh key will be written"
        backup_id, key = await self._load(ctx)
        what = "decrypts the canary" if self.backuper.canary() else "is a valid Fernet key"
        return f"key backup #{backup_id} (key {fingerprint(key)}) {what}"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        if name == "restore_key":
            return await self._restore(ctx)
        if name == "new_key":
            return await self._new_key()
        if name == "restart_app" and self.settings.restart:
            res = await run_recorded(ctx, name, self.settings.restart,
                                     self.settings.command_timeout)
            return f"app restarted with {Path(self.settings.restart[0]).name} " \
                   f"(exit {res.returncode})"
        raise StepFailed(f"key executor has no step {name!r}")

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "restore_key":
            backup_id, key = await self._load(ctx)
            now, why = await asyncio.to_thread(self._current)
            if now == fingerprint(key) and not why:
                return done(f"the key in {self.settings.file.name} is {now}, backup "
                            f"#{backup_id}'s")
            return absent(f"the key in {self.settings.file.name} is {now or '(unreadable)'}, "
                          f"not backup #{backup_id}'s {fingerprint(key)}")
        if name == "new_key":
            return await asyncio.to_thread(self._new_key_effect, ctx, since)
        if name == "restart_app":
            return command_effect(ctx, name, since)
        return CHECK_ONLY

    def _new_key_effect(self, ctx: StepContext, since: datetime) -> Effect:
        now, why = self._current()
        before = ctx.plan.current.get(KEY)
        if now is not None and not why and now != before:
            return done(f"a fresh key {now} is in {self.settings.file.name}"
                        + (" and decrypts the new canary" if self.settings.canary_file else ""))
        canary = self.settings.canary_file
        if canary is not None and canary.exists() and \
                datetime.fromtimestamp(canary.stat().st_mtime).astimezone() >= since:
            return unknown(f"a new canary was written to {canary.name} but the key in "
                           f"{self.settings.file.name} is {now or '(unreadable)'}: {why}")
        return absent(f"the key in {self.settings.file.name} is still {now or '(unreadable)'}")

    async def _restore(self, ctx: StepContext) -> str:
        backup_id, key = await self._load(ctx)  # verified again right before it is written
        before, _ = await asyncio.to_thread(self._current)
        try:
            await asyncio.to_thread(self._write, key)
        except OSError as exc:
            raise StepFailed(f"cannot write {self.settings.file}: {exc.strerror}; the previous "
                             "file is unchanged") from None
        after, why = await asyncio.to_thread(self._current)
        if after != fingerprint(key) or why:
            raise StepFailed(f"after the restore the key in {self.settings.file.name} is "
                             f"{after} ({why or 'unexpected'})")
        return (f"key {after} from backup #{backup_id} written to {self.settings.file.name}"
                f"{f' ({self.settings.env_var})' if self.settings.env_var else ''}; "
                f"it replaced key {before or '(unreadable)'}")

    async def _new_key(self) -> str:
        """The key disaster's procedure: a fresh key, and a canary made with it."""
        before, _ = await asyncio.to_thread(self._current)
        key = Fernet.generate_key().decode()
        s = self.settings
        try:
            if s.canary_file is not None:
                token = Fernet(key.encode()).encrypt(s.canary_plaintext.encode())
                await asyncio.to_thread(replace_file, s.canary_file, token + b"\n")
            await asyncio.to_thread(self._write, key)
        except OSError as exc:
            raise StepFailed(f"cannot write the fresh key: {exc.strerror} ({exc.filename})"
                             ) from None
        after, why = await asyncio.to_thread(self._current)
        if after != fingerprint(key) or why:
            raise StepFailed(f"after writing the fresh key, {s.file.name} holds {after} "
                             f"({why or 'unexpected'})")
        canary = f"; a new canary in {s.canary_file.name}" if s.canary_file else ""
        return (f"fresh key {after} written to {s.file.name}"
                f"{f' ({s.env_var})' if s.env_var else ''}, replacing {before or '(unreadable)'}"
                f"{canary}; back it up off this host now")

    def _write(self, key: str) -> None:
        path, var = self.settings.file, self.settings.env_var
        if var is None:
            replace_file(path, key.encode() + b"\n")
            return
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        replace_file(path, with_value(text, var, key).encode())
