"""fernet_key with real keys: valid, rotated away, garbage, missing, env files, canaries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from rollbackd.probes.fernet_key import FernetKeyProbe, FernetKeySettings
from rollbackd.probes.observation import Observation, Status, Symptom

KEY = Fernet.generate_key().decode()
OTHER = Fernet.generate_key().decode()
CANARY_TEXT = "rollbackd canary"
CANARY = Fernet(KEY).encrypt(CANARY_TEXT.encode()).decode()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


async def check(**kw: Any) -> Observation:
    return await FernetKeyProbe("key", FernetKeySettings(**kw)).check()


def assert_no_key(obs: Observation, *keys: str) -> None:
    for key in keys:
        for text in (obs.detail, repr(obs)):
            assert key not in text
            assert key[:20] not in text


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write(tmp_path / "fernet.key", KEY + "\n")


async def test_valid_key_decrypts_the_canary(key_file: Path) -> None:
    obs = await check(key_file=key_file, canary=CANARY, canary_plaintext=CANARY_TEXT)
    assert obs.status is Status.OK and obs.symptom is None, obs.detail
    assert obs.version == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert obs.detail == f"key {obs.version} from fernet.key decrypts the canary."
    assert_no_key(obs, KEY)


async def test_without_a_canary_only_the_format_is_checked(key_file: Path) -> None:
    obs = await check(key_file=key_file)
    assert obs.ok and obs.detail.endswith("is a valid Fernet key.")


async def test_another_key_fails_then_the_restored_key_passes(key_file: Path) -> None:
    write(key_file, OTHER)  # a deploy shipped a freshly generated key
    obs = await check(key_file=key_file, canary=CANARY)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.KEY_INVALID)
    fp = hashlib.sha256(OTHER.encode()).hexdigest()[:12]
    assert obs.detail == f"key {fp} cannot decrypt the canary."
    assert_no_key(obs, KEY, OTHER)
    write(key_file, KEY)  # restored from its backup
    assert (await check(key_file=key_file, canary=CANARY)).ok


@pytest.mark.parametrize("garbage", [
    pytest.param("not-a-key", id="short"),
    pytest.param(KEY[:-4] + "!!!=", id="bad-base64"),
    pytest.param("A" * 44, id="wrong-length-decoded"),
    pytest.param(KEY[:30], id="truncated"),
])
async def test_garbage_key(key_file: Path, garbage: str) -> None:
    write(key_file, garbage)
    obs = await check(key_file=key_file, canary=CANARY)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.KEY_INVALID)
    assert "is not a valid Fernet key" in obs.detail and obs.version is None
    assert_no_key(obs, garbage)
    write(key_file, KEY)
    assert (await check(key_file=key_file, canary=CANARY)).ok


async def test_missing_empty_or_unreadable_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    obs = await check(key_file=missing, canary=CANARY)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.KEY_INVALID)
    assert obs.detail == f"key file '{missing}' is missing."
    obs = await check(key_file=write(tmp_path / "empty.key", "\n"))
    assert obs.symptom is Symptom.KEY_INVALID and "holds no key" in obs.detail
    obs = await check(key_file=tmp_path)
    assert obs.symptom is Symptom.KEY_INVALID and "Is a directory" in obs.detail
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe" + KEY.encode())
    obs = await check(key_file=tmp_path / "bin.key")
    assert obs.symptom is Symptom.KEY_INVALID and "not UTF-8" in obs.detail


async def test_env_file(tmp_path: Path) -> None:
    env = write(tmp_path / "app.env", f"# app settings\nDATABASE_URL=sqlite:///x\n"
                                      f"export DB_ENCRYPTION_KEY='{KEY}'\nOTHER=1\n")
    obs = await check(key_file=env, env_var="DB_ENCRYPTION_KEY", canary=CANARY)
    assert obs.ok, obs.detail
    obs = await check(key_file=env, env_var="SECRET_KEY", canary=CANARY)
    assert obs.symptom is Symptom.KEY_INVALID
    assert obs.detail == f"SECRET_KEY is not set in '{env}'."


async def test_env_file_read_as_a_bare_key_hints_at_env_var(tmp_path: Path) -> None:
    env = write(tmp_path / "app.env", f"DB_ENCRYPTION_KEY={KEY}\n")
    obs = await check(key_file=env)
    assert obs.symptom is Symptom.KEY_INVALID and "set env_var" in obs.detail
    assert_no_key(obs, KEY)


async def test_canary_file_and_plaintext(tmp_path: Path, key_file: Path) -> None:
    canary = write(tmp_path / "canary.token", CANARY + "\n")
    assert (await check(key_file=key_file, canary_file=canary, canary_plaintext=CANARY_TEXT)).ok
    obs = await check(key_file=key_file, canary_file=canary, canary_plaintext="something else")
    assert obs.symptom is Symptom.KEY_INVALID
    assert "decrypts the canary to a different value (16 bytes)" in obs.detail
    assert CANARY_TEXT not in obs.detail


async def test_unreadable_canary_is_the_probes_problem(tmp_path: Path, key_file: Path) -> None:
    obs = await check(key_file=key_file, canary_file=tmp_path / "no-canary")
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert "cannot read canary file" in obs.detail


async def test_malformed_canary_token(key_file: Path) -> None:
    obs = await check(key_file=key_file, canary="not a token")
    assert obs.symptom is Symptom.KEY_INVALID and "cannot decrypt the canary" in obs.detail


@pytest.mark.parametrize(("kw", "words"), [
    pytest.param({"key_file": "fernet.key"}, "must be an absolute path", id="relative"),
    pytest.param({"key_file": "/k", "canary": CANARY, "canary_file": "/c"}, "not both",
                 id="two-canaries"),
    pytest.param({"key_file": "/k", "canary_plaintext": "x"}, "needs canary", id="plaintext-only"),
    pytest.param({"key_file": "/k", "env_var": "DB KEY"}, "should match pattern", id="bad-env-var"),
    pytest.param({"key_file": "/k", "key": KEY}, "Extra inputs", id="inline-key"),
])
def test_bad_settings(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        FernetKeySettings(**kw)


def test_repr_holds_paths_only(key_file: Path) -> None:
    probe = FernetKeyProbe("key", FernetKeySettings(key_file=key_file, canary=CANARY))
    assert KEY not in repr(probe) + repr(probe.settings) + probe.settings.model_dump_json()
