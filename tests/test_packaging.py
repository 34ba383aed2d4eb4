"""The distribution: an installed rollbackd carries its sample app and both console scripts."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_wheel_ships_the_sample_app_and_entry_points(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("rollbackd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("rollbackd/daemon/demo/sampleapp/template/app.py", "rollbackd/daemon/demo/sampleapp/template/alembic.ini",
                   "rollbackd/daemon/demo/sampleapp/template/migrations/versions/0001_users.py",
                   "rollbackd/daemon/demo/sampleapp/template/migrations/script.py.mako",
                   "rollbackd/daemon/demo/sampleapp/template/requirements.txt", "rollbackd/daemon/py.typed",
                   "rollbackd/probes/http_health.py", "rollbackd/policies/decision.py"):
        assert needed in names, needed
    for page in ("man/man1/rollbackctl.1", "bash-completion/completions/rollbackctl",
                 "zsh/site-functions/_rollbackctl", "man/man1/rollbackd.1"):
        assert f"rollbackd-0.1.0.data/data/share/{page}" in names, page
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rollbackd = rollbackd.daemon.cli:main" in text
    assert "rollbackctl = rollbackd.daemon.control.ctl:main" in text


def test_docker_and_kubernetes_are_imported_lazily() -> None:
    """A daemon that watches no container pays nothing for the docker or kubernetes clients."""
    code = ("import sys, rollbackd.daemon.app, rollbackd.daemon.cli, rollbackd.daemon.demo.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'kubernetes')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.e2e
def test_sdist_carries_systemd_docs_examples_license_and_man_pages(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (sdist,) = tmp_path.glob("rollbackd-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "systemd/rollbackd.service", "systemd/rollbackd.sysusers.conf",
                   "systemd/rollbackd.tmpfiles.conf", "systemd/README.md",
                   "systemd/rollbackd.service.d/targets.conf.example",
                   "docs/config-reference.md", "examples/git-systemd/rollbackd.toml",
                   "share/man/man1/rollbackctl.1", "share/zsh/site-functions/_rollbackctl"):
        assert needed in names, needed


def test_license_is_mit_for_the_rollbackd_developers() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) rollbackd developers\n")
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"


def test_demo_docker_and_kubernetes_are_extras_not_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert not core & {"flask", "alembic", "aiosmtpd", "docker", "kubernetes"}
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=\[ ]", d)[0] for d in extras["demo"]} == {
        "flask", "sqlalchemy", "alembic", "bcrypt", "aiosmtpd"}
    assert [d.split(">")[0] for d in extras["docker"]] == ["docker"]
    assert [d.split(">")[0] for d in extras["kubernetes"]] == ["kubernetes"]
