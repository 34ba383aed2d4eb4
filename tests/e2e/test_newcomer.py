"""A newcomer's walk: a config written from the reference, check-config --strict green,
`rollbackd run`, then `rollbackctl status` over its socket shows the target healthy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rollbackd.daemon.config_reference import REFERENCE
from tests.config.test_cli import HttpServer, http_server, run  # noqa: F401 - the fixture
from tests.conftest import DaemonProcess, wait_for
from tests.control.conftest import ROLLBACKCTL

pytestmark = pytest.mark.e2e


def test_from_the_reference_to_rollbackctl_status(tmp_path: Path,
                                                   http_server: HttpServer) -> None:  # noqa: F811
    reference = REFERENCE.read_text()
    # Every section the walk writes is one the reference documents.
    for header in ("[daemon]", "[contacts.<role>]", '[targets.<name>.probes.<probe>] kind = '
                   '"http_health"'):
        assert f"### `{header}`" in reference, header
    config = tmp_path / "rollbackd.toml"
    config.write_text(f"""\
[daemon]
state_dir = "{tmp_path}/state"
socket = "{tmp_path}/control.sock"
metrics_address = ""

[contacts.oncall]
emails = ["oncall@example.org"]

[contacts.emergency]
emails = ["cto@example.org"]
tier = 2

[targets.web.probes.health]
kind = "http_health"
url = "{http_server.url}/health"
interval = "1s"
timeout = "500ms"
""")
    checked = run("check-config", "--strict", str(config))
    assert (checked.returncode, checked.stderr) == (0, "")
    assert checked.stdout == f"{config}: ok (1 targets, 1 probes)\n"

    d = DaemonProcess(config, tmp_path / "control.sock", tmp_path / "state", tmp_path / "log")
    d.start()
    try:
        def status() -> str:
            out = subprocess.run([ROLLBACKCTL, "--socket", str(d.socket), "status"],
                                 capture_output=True, text=True, timeout=30)
            assert (out.returncode, out.stderr) == (0, "")
            return out.stdout

        def passing() -> str | None:
            shown = status()
            return shown if "health:passing" in shown else None

        shown = wait_for(passing, 20, "the probe passing")
        (row,) = [line for line in shown.splitlines() if line.startswith("web ")]
        assert row.split()[:2] == ["web", "ok"], row
    finally:
        assert d.stop() == 0
