"""The pieces of the container build that a warm cache never runs: apt's sources, the mirror
debootstrap gets, a debootstrap that cannot reach it, and the wheel closure for another Python."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.infra.services import ServiceUnavailable
from tests.systemd import rootfs

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] https://other.example/apt stable contrib
deb-src http://mirror.example/debian bookworm main
deb http://mirror.example/debian-security bookworm-security main
deb http://old.example/debian bullseye main contrib
"""


def test_apt_sources_in_both_formats() -> None:
    entries = list(rootfs._deb822(DEB822))
    assert [e["uris"] for e in entries] == ["http://mirror.example/debian",
                                            "http://mirror.example/debian-security"]
    assert entries[0]["suites"] == "bookworm bookworm-updates"
    assert entries[0]["signed-by"] == "/usr/share/keyrings/debian-archive-keyring.gpg"
    lines = list(rootfs._one_line(ONE_LINE))
    assert [(e["types"], e["uris"], e["suites"]) for e in lines] == [
        ("deb", "https://other.example/apt", "stable"),
        ("deb-src", "http://mirror.example/debian", "bookworm"),
        ("deb", "http://mirror.example/debian-security", "bookworm-security"),
        ("deb", "http://old.example/debian", "bullseye"),
    ]
    assert lines[0]["signed-by"] == "/etc/apt/keyrings/x.gpg"


def test_mirror_is_a_main_release_entry_preferring_the_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = list(rootfs._one_line(ONE_LINE)) + list(rootfs._deb822(DEB822))
    monkeypatch.setattr(rootfs, "apt_sources", lambda: entries)
    # contrib-only, deb-src and -security entries are skipped; bookworm wins over bullseye.
    assert rootfs.debian_mirror() == ("http://mirror.example/debian",
                                      "/usr/share/keyrings/debian-archive-keyring.gpg")
    monkeypatch.setattr(rootfs, "apt_sources", lambda: entries[:3])
    with pytest.raises(ServiceUnavailable, match="no Debian mirror"):
        rootfs.debian_mirror()


def test_this_machines_mirror_is_found() -> None:
    url, _ = rootfs.debian_mirror()
    assert url.startswith(("http://", "https://", "file:/")), url


def test_debootstrap_failing_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails loudly, with debootstrap's own reason; never skips. (A closed loopback port as the
    mirror: nothing leaves the machine.)"""
    monkeypatch.setattr(rootfs, "debian_mirror", lambda: ("http://127.0.0.1:9/debian", None))
    with pytest.raises(ServiceUnavailable) as err:
        rootfs._debootstrap(tmp_path / "root", tmp_path / "debootstrap.log")
    message = str(err.value)
    assert "debootstrap of bookworm from http://127.0.0.1:9/debian failed" in message
    assert "Release" in message, message  # debootstrap's own words: it could not get Release


def _wheel(directory: Path, name: str, version: str, requires: list[str]) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_closure_follows_the_target_pythons_markers(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    root = _wheel(tmp_path, "app", "1.0", ["lib>=1", "db[binary]>=3"])
    _wheel(house, "lib", "1.2", ['old-backport>=4; python_full_version < "3.11.3"',
                                 'win-only; sys_platform == "win32"'])
    _wheel(house, "db", "3.1", ['db-binary==3.1; extra == "binary"', 'db-c; extra == "c"'])
    env = {"python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux",
           "implementation_name": "cpython", "platform_machine": "x86_64"}
    missing = sorted(str(r) for r in rootfs._missing(root, house, env))
    assert missing == ["db-binary==3.1; extra == \"binary\"",
                       "old-backport>=4; python_full_version < \"3.11.3\""]
    newer = {**env, "python_full_version": "3.11.7"}
    assert [r.name for r in rootfs._missing(root, house, newer)] == ["db-binary"]
