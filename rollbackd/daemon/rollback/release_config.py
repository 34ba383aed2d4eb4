"""Releases carry their config: the files a release ran with are recorded when it earns
known-good, and a deployment rollback puts them back with its code, before the restart.

Secret values (names matching deployment.secret_names, and whole secret files) are sealed with
the config key (rollbackd/daemon/rollback/config_key.py), or only fingerprinted when config_secrets is
"fingerprint". The rule for a fingerprint: the file is put back only when every value it needs
can be had, so a secret kept as a fingerprint only must still be in the current file (same
fingerprint); otherwise the rollback holds, before anything changed, naming the keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rollbackd.daemon.backup.envfile import replace_file
from rollbackd.daemon.config import GitDeployment
from rollbackd.daemon.journal.release_config import ReleaseConfigs
from rollbackd.daemon.rollback import config_key
from rollbackd.daemon.rollback.base import Effect, StepContext, StepFailed, StepHeld, absent, done
from rollbackd.daemon.rollback.release_files import (
    Unrestorable,
    capture,
    name_changes,
    names_changed,
    render,
    sha256,
)
from rollbackd.policies.plans import Component

log = logging.getLogger("rollbackd.release_config")

STEP = "restore_config"


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None


class ReleaseConfig:
    """One target's recorded config: records it, checks it can be put back, puts it back."""

    def __init__(self, target: str, settings: GitDeployment, store: ReleaseConfigs,
                 state_dir: Path) -> None:
        self.target = target
        self.settings = settings
        self.store = store
        self.state_dir = state_dir
        self._secret = re.compile(settings.secret_names)
        self._sealer: config_key.Sealer | None = None

    @property
    def sealer(self) -> config_key.Sealer:
        if self._sealer is None:  # on first use: a target without recorded files needs no key
            self._sealer = config_key.Sealer(config_key.load(self.state_dir))
        return self._sealer

    # -- recording ----------------------------------------------------------------------------

    def _capture(self) -> list[dict[str, Any]]:
        encrypt = self.settings.config_secrets == "encrypt"
        return [capture(path, kind, lambda n: bool(self._secret.search(n)), self.sealer, encrypt)
                for path, kind in self.settings.recorded_files]

    async def record(self, version: str) -> str:
        files = await asyncio.to_thread(self._capture)
        self.store.save(self.target, version, files)
        sealed = sum(1 for f in files for p in f["parts"] if p[0] == "s")
        return (f"{len(files)} config file(s) recorded with {version[:12]}, {sealed} secret "
                f"value(s) {'sealed' if self.settings.config_secrets == 'encrypt' else 'fingerprinted'}")

    async def differences(self, version: str) -> list[tuple[Path, str, str]]:
        """(file, name, changed | removed | added) of the current files against the config
        recorded with `version`: what changed since, names only (the incident's suspects)."""
        records = self.store.files(self.target, version) or []  # the journal: on the loop

        def compare() -> list[tuple[Path, str, str]]:
            return [(Path(r["path"]), name, how) for r in records
                    for name, how in name_changes(r, self.sealer, _read(Path(r["path"])))]

        return await asyncio.to_thread(compare)

    # -- the rollback's step --------------------------------------------------------------------

    def _recorded(self, ctx: StepContext) -> list[dict[str, Any]] | None:
        return self.store.files(self.target, ctx.target_of(Component.DEPLOYMENT))

    def _plan(self, files: list[dict[str, Any]]) -> list[tuple[Path, bytes | None, list[str]]]:
        """(file, its recorded bytes or None for absent, the names that change back)."""
        out, lost = [], []
        for record in files:
            path = Path(record["path"])
            current = _read(path)
            try:
                data = render(record, self.sealer, current)
            except Unrestorable as exc:
                lost += [f"{n} in {path}" for n in exc.names]
                continue
            out.append((path, data, names_changed(record, self.sealer, current)))
        if lost:
            raise Unrestorable(tuple(lost))
        return out

    def _held(self, ctx: StepContext, exc: Unrestorable) -> StepHeld:
        how = ("only its fingerprint was recorded (config_secrets = \"fingerprint\")"
               if self.settings.config_secrets == "fingerprint"
               else "its recorded value cannot be opened with the config key (was it replaced?)")
        return StepHeld(
            f"the config of {ctx.plan.target_version[:12]} cannot be put back whole: "
            f"{', '.join(exc.names)}: {how}, and the file holds another value now. Nothing was "
            "changed. Put the value that release ran with back by hand, then `rollbackctl "
            f"approve {ctx.incident_id}`; or deny it and act by hand")

    async def check(self, ctx: StepContext) -> str:
        """Before anything changes: every recorded file can be put back whole, or hold."""
        files = self._recorded(ctx)
        if files is None:
            return f"no config recorded with {ctx.plan.target_version[:12]}: it stays as it is"
        try:
            planned = await asyncio.to_thread(self._plan, files)
        except Unrestorable as exc:
            raise self._held(ctx, exc) from None
        return f"its config ({len(planned)} file(s)) can be put back"

    async def restore(self, ctx: StepContext) -> str:
        files = self._recorded(ctx)
        if files is None:
            return (f"no config was recorded with {ctx.plan.target_version[:12]} (recorded as a "
                    "release earns known-good): the files stay as they are")
        try:
            planned = await asyncio.to_thread(self._plan, files)
        except Unrestorable as exc:
            raise self._held(ctx, exc) from None
        said = []
        for path, data, names in planned:
            if _hash(path) == (None if data is None else sha256(data)):
                said.append(f"{path} unchanged")
                continue
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    await asyncio.to_thread(replace_file, path, data)
            except OSError as exc:
                raise StepFailed(f"cannot put back {path}: {exc.strerror}") from None
            said.append(f"{path} put back" + (f" (keys changed back: {', '.join(names)})"
                                                if names else " (same keys, same values)"))
        log.info("target=%s step=%s files=%d", self.target, STEP, len(planned))
        return f"config of {ctx.plan.target_version[:12]}: " + "; ".join(said)

    async def effect(self, ctx: StepContext) -> Effect:
        """Each file's content hash is the recorded one (or it is absent, as recorded)."""
        files = self._recorded(ctx)
        if files is None:
            return done("no config was recorded with the target: nothing to put back")
        off = [r["path"] for r in files if _hash(Path(r["path"])) != r["sha256"]]
        if not off:
            return done(f"every recorded config file ({len(files)}) has its recorded content")
        # Each file is replaced atomically and putting one back twice does no harm.
        return absent(f"not yet put back: {', '.join(off)}")


def _hash(path: Path) -> str | None:
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None


def attach(components: Mapping[Component, Any], target: str, settings: Any,
           store: ReleaseConfigs, state_dir: Path) -> ReleaseConfig | None:
    """Give the git executor its target's recorded config, when the deployment lists files."""
    executor = components.get(Component.DEPLOYMENT)
    if not isinstance(settings, GitDeployment) or not settings.recorded_files \
            or not hasattr(executor, "release_config"):
        return None
    found = ReleaseConfig(target, settings, store, state_dir)
    executor.release_config = found  # type: ignore[union-attr]
    return found
