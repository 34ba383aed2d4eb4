"""The distribution: an installed rollbackd carries its sample app and both console scripts."""

from __future__ import annotations

import subprocess
import sys
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
    for needed in ("daemon/demo/sampleapp/template/app.py", "daemon/demo/sampleapp/template/alembic.ini",
                   "daemon/demo/sampleapp/template/migrations/versions/0001_users.py",
                   "daemon/demo/sampleapp/template/migrations/script.py.mako",
                   "daemon/demo/sampleapp/template/requirements.txt", "daemon/py.typed",
                   "probes/http_health.py", "policies/decision.py"):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rollbackd = daemon.cli:main" in text
    assert "rollbackctl = daemon.control.ctl:main" in text


def test_docker_and_kubernetes_are_imported_lazily() -> None:
    """A daemon that watches no container pays nothing for the docker or kubernetes clients."""
    code = ("import sys, daemon.app, daemon.cli, daemon.demo.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'kubernetes')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
