"""Encryption-key backups and restore: valid, canary-checked, 0600, optionally sealed; the key
itself never appears in a detail, the evidence or the log."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.backup.key import KeyBackuper
from rollbackd.daemon.backup.store import BackupStore
from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.key_restore import KeyExecutor
from rollbackd.daemon.secrets import SecretValue
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Capability, Component, Plan, PlanKind
from rollbackd.probes.fernet_key import fingerprint
from tests.recovery.support import ctx, key_settings, plan_for, wait_healthy

pytestmark = pytest.mark.e2e


def canary_for(key: str) -> str:
    return Fernet(key.encode()).encrypt(b"canary").decode()


def key_plan(ex: KeyExecutor, backup_id: int) -> Plan:
    return plan_for(PlanKind.KEY_RESTORE, IncidentClass.KEY_INVALID, Capability.KEY_RESTORE,
                    ex.steps, {Component.KEY: str(backup_id)})


def replace_key(ws: Workspace) -> str:
    """Someone writes a fresh key over the good one (a bad deploy, a bad secret sync)."""
    new = Fernet.generate_key().decode()
    text = ws.env_file.read_text()
    old = ws.env()["DB_ENCRYPTION_KEY"]
    ws.env_file.write_text(text.replace(old, new))
    return new


async def test_a_replaced_key_is_restored_and_the_app_restarted(
        app: Workspace, store: BackupStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = app.env()["DB_ENCRYPTION_KEY"]
    ex = KeyExecutor(key_settings(app, canary_for(good)))
    ex.attach(store)
    b = await store.take(ex.backuper)
    assert b.verified and b.versions["fingerprint"] == fingerprint(good)
    assert stat.S_IMODE(b.path.stat().st_mode) == 0o600
    other_lines = [line for line in app.env_file.read_text().splitlines()
                   if not line.startswith("DB_ENCRYPTION_KEY=")]

    bad = replace_key(app)
    app.restart()
    wait_healthy(app)
    assert await ex.current_version() == fingerprint(bad)
    evidence = await ex.evidence()
    assert evidence["problem"] == f"key {fingerprint(bad)} cannot decrypt the canary"

    c = ctx(key_plan(ex, b.id), incident_id=11)
    details = [await ex.backup_current(c), await ex.verify_target(c)]
    details += [await ex.run_step(s.name, c) for s in c.plan.steps
                if s.component is Component.KEY]
    assert "NOT verified" in details[0]  # the replaced key is kept, as evidence
    assert f"(key {fingerprint(good)}) decrypts the canary" in details[1]
    assert f"it replaced key {fingerprint(bad)}" in details[2]
    assert "app restarted" in details[3]

    assert app.env()["DB_ENCRYPTION_KEY"] == good
    kept = [line for line in app.env_file.read_text().splitlines()
            if not line.startswith("DB_ENCRYPTION_KEY=")]
    assert kept == other_lines  # only the key line changed
    assert stat.S_IMODE(app.env_file.stat().st_mode) == 0o600
    wait_healthy(app)
    assert (await ex.evidence())["problem"] is None
    (replaced,) = store.for_incident("key", 11)
    assert replaced.versions["fingerprint"] == fingerprint(bad)
    text = repr(details) + repr(evidence) + caplog.text
    for key in (good, bad):
        assert key not in text


async def test_a_sealed_key_backup_needs_the_passphrase(tmp_path: Path,
                                                        store: BackupStore) -> None:
    key = Fernet.generate_key().decode()
    key_file = tmp_path / "fernet.key"
    key_file.write_text(key + "\n")
    sealed = KeyBackuper(key_file, None, canary_for(key), None, "correct horse")
    b = await store.take(sealed)
    assert b.verified and b.path.name.endswith(".key.sealed")
    assert key.encode() not in b.path.read_bytes()
    wrong = KeyBackuper(key_file, None, canary_for(key), None, "wrong horse")
    assert await wrong.verify(b.path) == ("the backup cannot be opened with the configured "
                                          "passphrase")
    none = KeyBackuper(key_file, None, None, None, None)
    assert "sealed with a passphrase" in (await none.verify(b.path) or "")
    assert sealed.load(b.path) == key


async def test_a_plain_key_file_restore_with_a_sealed_backup(tmp_path: Path,
                                                             store: BackupStore) -> None:
    key = Fernet.generate_key().decode()
    key_file = tmp_path / "fernet.key"
    key_file.write_text(key + "\n")
    secret = tmp_path / "passphrase"
    secret.write_text("s3cret\n")
    from rollbackd.daemon.rollback.data_settings import KeySettings

    ex = KeyExecutor(KeySettings(file=key_file, canary=canary_for(key),
                                 passphrase_file=SecretValue(str(secret), "s3cret")))
    ex.attach(store)
    assert [s.name for s in ex.steps] == ["restore_key"]  # no restart argv: no restart step
    b = await store.take(ex.backuper)
    key_file.write_text("garbage")
    c = ctx(key_plan(ex, b.id))
    assert "decrypts the canary" in await ex.verify_target(c)
    await ex.run_step("restore_key", c)
    assert key_file.read_text() == key + "\n"


async def test_key_backups_that_no_longer_hold_are_refused(tmp_path: Path,
                                                           store: BackupStore) -> None:
    key = Fernet.generate_key().decode()
    key_file = tmp_path / "fernet.key"
    key_file.write_text(key)
    canary = tmp_path / "canary"
    canary.write_text(canary_for(key))
    from rollbackd.daemon.rollback.data_settings import KeySettings

    ex = KeyExecutor(KeySettings(file=key_file, canary_file=canary))
    ex.attach(store)
    first = await store.take(ex.backuper)
    second = await store.take(ex.backuper)
    second.path.write_text(Fernet.generate_key().decode())  # swapped behind our back
    with pytest.raises(StepFailed, match="checksum mismatch"):
        await ex.verify_target(ctx(key_plan(ex, second.id)))
    # The canary moves on to a new key: the old backup no longer decrypts it.
    canary.write_text(canary_for(Fernet.generate_key().decode()))
    with pytest.raises(StepFailed, match="cannot decrypt the canary; refusing to restore"):
        await ex.run_step("restore_key", ctx(key_plan(ex, first.id)))
    assert store.newest_verified("key") is None
    assert key_file.read_text() == key


async def test_invalid_keys_never_verify(tmp_path: Path, store: BackupStore) -> None:
    key_file = tmp_path / "app.env"
    key_file.write_text("OTHER=1\nDB_ENCRYPTION_KEY=not-a-key\n")
    b = await store.take(KeyBackuper(key_file, "DB_ENCRYPTION_KEY", None, None, None))
    assert not b.verified and "not a valid Fernet key (9 characters" in (b.verify_error or "")
    key_file.write_text("OTHER=1\n")
    from rollbackd.daemon.backup.base import BackupFailed

    with pytest.raises(BackupFailed, match="DB_ENCRYPTION_KEY is not set"):
        await store.take(KeyBackuper(key_file, "DB_ENCRYPTION_KEY", None, None, None))
