"""A recorded config file comes back byte for byte, with its secret values sealed in between."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.rollback.config_key import Sealer, load
from rollbackd.daemon.rollback.release_files import Unrestorable, capture, names_changed, render


def secret(name: str) -> bool:
    return any(w in name.upper() for w in ("TOKEN", "PASSWORD", "KEY"))


SEALER = Sealer(Fernet.generate_key())

CASES = [
    pytest.param("env", b"A=1\nexport API_TOKEN='s3cr3t value'\n# KEY=old\n\nB = two  \n",
                 id="env-quotes-export-comment"),
    pytest.param("env", b"A=1\r\nAPI_TOKEN=s3cr3t\r\nNO_NEWLINE_KEY=v", id="env-crlf-no-eol"),
    pytest.param("env", "NAME=Jos\u00e9\nAPI_TOKEN=\u00fc\u00df\n".encode(), id="env-utf8"),
    pytest.param("env", b"API_TOKEN=\xff\xfe\nA=\x80\n", id="env-not-utf8"),
    pytest.param("config", b'[db]\npassword = "s3cr3t"\nhost: db.local\n; c\n', id="ini-toml"),
    pytest.param("secret", b"s3cr3t\n", id="secret-file"),
    pytest.param("env", b"", id="empty"),
]


@pytest.mark.parametrize(("kind", "data"), CASES)
@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypt", "fingerprint"])
def test_back_byte_for_byte(tmp_path: Path, kind: str, data: bytes, encrypt: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(data)
    stored = json.dumps(capture(path, kind, secret, SEALER, encrypt))
    record = json.loads(stored)  # as the journal keeps it
    for word in (b"s3cr3t", "\u00fc\u00df".encode()):
        assert word.decode() not in stored
    # Sealed: back from the record alone; fingerprinted: back while the file holds the value.
    current = None if encrypt else data.decode("utf-8", errors="surrogateescape")
    assert render(record, SEALER, current) == data
    assert names_changed(record, SEALER, data.decode("utf-8", errors="surrogateescape")) == []


def test_fingerprint_cannot_bring_back_a_changed_value(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\nAPI_TOKEN=old\nDB_PASSWORD=pw\n")
    record = capture(path, "env", secret, SEALER, encrypt=False)
    now = "A=2\nAPI_TOKEN=new\nDB_PASSWORD=pw\nEXTRA=1\n"
    with pytest.raises(Unrestorable) as err:
        render(record, SEALER, now)
    assert err.value.names == ("API_TOKEN",)
    assert names_changed(record, SEALER, now) == ["A", "API_TOKEN", "EXTRA (removed: added since)"]
    # Another key cannot open what this one sealed: the same rule holds.
    sealed = capture(path, "env", secret, SEALER, encrypt=True)
    with pytest.raises(Unrestorable):
        render(sealed, Sealer(Fernet.generate_key()), now)


def test_missing_file_is_recorded_as_missing(tmp_path: Path) -> None:
    record = capture(tmp_path / "none.env", "env", secret, SEALER, True)
    assert render(record, SEALER, "A=1\n") is None
    assert names_changed(record, SEALER, "A=1\n") == ["(file) (removed: added since)"]


def test_key_made_once_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    key = load(tmp_path)
    assert (tmp_path / "config.key").stat().st_mode & 0o777 == 0o600
    assert load(tmp_path) == key
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "config-key").write_bytes(Fernet.generate_key())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load(tmp_path) == (creds / "config-key").read_bytes()
