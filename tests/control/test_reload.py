"""`rollbackctl reload` names the keys that wait for a restart, and the old values stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DaemonProcess
from tests.control.conftest import rollbackctl


def config(root: Path, socket: str, interval: str) -> str:
    return (f'[daemon]\nstate_dir = "{root}/state"\nsocket = "{root}/{socket}"\n'
            'metrics_address = ""\n[targets.web.probes.health]\nkind = "http_health"\n'
            f'url = "http://127.0.0.1:9/health"\ninterval = "{interval}"\ntimeout = "1s"\n')


def test_reload_names_what_needs_a_restart_and_keeps_it(
        tmp_path: Path, start_daemon: Callable[..., DaemonProcess]) -> None:
    d = start_daemon(config(tmp_path, "a.sock", "5s"))
    d.config.write_text(config(tmp_path, "b.sock", "7s"))
    out = rollbackctl(d, "reload")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [
        "config reloaded: web",
        "not applied until a restart (the old value stays in force):",
        f"  daemon.socket: '{tmp_path}/a.sock' -> '{tmp_path}/b.sock'"]
    assert d.socket == tmp_path / "a.sock" and not (tmp_path / "b.sock").exists()
    again = json.loads(rollbackctl(d, "--json", "reload").stdout)
    assert again["needs_restart"] == [{"key": "daemon.socket", "old": f"'{tmp_path}/a.sock'",
                                       "new": f"'{tmp_path}/b.sock'"}]
    assert (f"reload key=daemon.socket status=needs-restart old='{tmp_path}/a.sock' "
            f"new='{tmp_path}/b.sock'") in d.log_text()
