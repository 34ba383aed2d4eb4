"""Helpers for the control tests: the real rollbackctl console script, seeded users, the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess

ROLLBACKCTL = str(Path(sys.executable).parent / "rollbackctl")


def rollbackctl(d: DaemonProcess | None, *argv: str, socket: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it."""
    sock = ["--socket", socket or str(d.socket)] if (socket or d) else []
    return subprocess.run([ROLLBACKCTL, *sock, *argv], capture_output=True, text=True,
                          timeout=90, env={**os.environ, **(env or {})})


def ok_json(d: DaemonProcess, *argv: str) -> Any:
    out = rollbackctl(d, "--json", *argv)
    assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return json.loads(out.stdout)


def seed(ws: Workspace, email: str, password: str, admin: bool = False) -> None:
    subprocess.run([sys.executable, "seed.py", email, password, *(["--admin"] if admin else [])],
                   cwd=ws.app_dir, check=True, capture_output=True, env={**os.environ, **ws.env()})


def login(ws: Workspace, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{ws.url}/api/auth/login", json={"email": email, "password": password},
                      timeout=10)


def database(ws: Workspace) -> Path:
    return ws.root / "data" / "grading.db"


def audit_rows(d: DaemonProcess) -> list[dict[str, Any]]:
    with closing(d.db()) as db:
        return [dict(r) for r in db.execute("SELECT * FROM audit ORDER BY id")]


def accounts_section(ws: Workspace, extra: str = "") -> str:
    return f'\n[targets.grading.accounts]\npath = "{database(ws)}"\n{extra}\n'
