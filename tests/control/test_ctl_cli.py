"""rollbackctl for people and scripts: one time format, human durations and sizes, the state
column, --json anywhere with JSON errors, exit codes, a closed pipe, --version, completion and
man pages that match the parser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollbackd.daemon.control.ctl import version
from rollbackd.daemon.control.ctl_docs import ROOT, generated
from rollbackd.daemon.control.ctl_format import ago, duration, local_time, size
from tests.conftest import DaemonProcess, wait_for
from tests.control.conftest import ROLLBACKCTL, rollbackctl

# --- the formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "shown"), [
    pytest.param(0.012425070000006144, "12 ms", id="ms"), pytest.param(1.25, "1.2 s", id="s"),
    pytest.param(184, "3 min 4 s", id="min"), pytest.param(7500, "2 h 5 min", id="h"),
    pytest.param(3600, "1 h", id="whole-h"), pytest.param(273600, "3 d 4 h", id="d")])
def test_duration(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(("n", "shown"), [(512, "512 B"), (1536, "1.5 KiB"),
                                          (20 * 1024**2, "20.0 MiB"), (3 * 1024**3, "3.0 GiB")])
def test_size(n: int, shown: str) -> None:
    assert size(n) == shown


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("sent", [
    pytest.param("2024-05-01 12:03:12.5+00:00", id="str-of-datetime"),
    pytest.param("2024-05-01T12:03:12Z", id="iso-z"),
    pytest.param("2024-05-01T12:03:12", id="naive-utc"),
    pytest.param(1714564992.0, id="unix-seconds")])
def test_every_time_form_is_shown_one_way(sent: object, berlin: None) -> None:
    assert local_time(sent) == "2024-05-01 14:03:12 +02:00"


def test_ago() -> None:
    now = datetime(2024, 5, 1, 12, 10, tzinfo=UTC)
    assert ago("2024-05-01T12:05:00Z", now) == "5 min ago"
    assert ago("2024-05-01T14:10:00Z", now) == "in 2 h"
    assert ago("2024-05-01T12:10:00Z", now) == "just now"


# --- against a running daemon --------------------------------------------------------------------

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon watching a port nobody listens on: one app_down incident, escalated only."""
    root = tmp_path_factory.mktemp("ctl")
    config = root / "rollbackd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{root}/state"\nsocket = "{root}/ctl.sock"\n'
                      'metrics_address = ""\n[targets.web.probes.health]\nkind = "http_health"\n'
                      'url = "http://127.0.0.1:9/health"\ninterval = "200ms"\ntimeout = "100ms"\n'
                      "failure_threshold = 1\n")
    d = DaemonProcess(config, root / "ctl.sock", root / "state", root / "daemon.log")
    d.start()
    try:
        wait_for(lambda: d.result("incidents"), 20, "an incident")
        yield d
    finally:
        d.stop()


def test_json_after_the_command_is_the_same(daemon: DaemonProcess) -> None:
    before = json.loads(rollbackctl(daemon, "--json", "incidents").stdout)
    after = rollbackctl(daemon, "incidents", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == before and before[0]["target"] == "web"


def test_refusal_under_json_is_json(daemon: DaemonProcess) -> None:
    out = rollbackctl(daemon, "show", "999", "--json")
    assert (out.returncode, out.stderr) == (1, "")
    assert json.loads(out.stdout) == {"ok": False, "code": "not_found",
                                      "error": "no incident 999"}


def test_unreachable_under_json_is_json(tmp_path: Path) -> None:
    out = rollbackctl(None, "--json", "status", socket=str(tmp_path / "none.sock"))
    assert (out.returncode, out.stderr) == (3, "")
    reply = json.loads(out.stdout)
    assert (reply["ok"], reply["code"]) == (False, "unreachable")
    assert reply["error"].startswith(f"no control socket at {tmp_path / 'none.sock'}")


@pytest.mark.parametrize("argv", [
    pytest.param(["pause", "web", "--for", "banana", "--reason", "x"], id="bad-duration"),
    pytest.param(["incidents", "--limit", "many"], id="not-a-number"),
    pytest.param(["frobnicate"], id="unknown-command"),
    pytest.param(["known-good", "mark-bad", "web"], id="missing-version")])
def test_usage_errors_exit_2(daemon: DaemonProcess, argv: list[str]) -> None:
    human = rollbackctl(daemon, *argv)
    assert (human.returncode, human.stdout) == (2, "")
    as_json = rollbackctl(daemon, *argv, "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["code"] in ("usage", "bad_args")
    assert daemon.result("status")["overrides"] == []  # nothing was paused


def test_closed_pipe_exits_quietly(daemon: DaemonProcess) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written, as after `| head` quits
    with os.fdopen(write, "wb") as stdout:
        out = subprocess.run([ROLLBACKCTL, "--socket", str(daemon.socket), "incidents"],
                             stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (141, "")


def test_version() -> None:
    out = subprocess.run([ROLLBACKCTL, "--version"], capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, f"rollbackctl {version()}\n")
    assert version() != "unknown"


def test_tables_show_local_time_and_how_long_ago(daemon: DaemonProcess) -> None:
    out = rollbackctl(daemon, "incidents")
    header, first = out.stdout.splitlines()[:2]
    assert header.split()[:6] == ["ID", "TARGET", "CLASS", "STATE", "DETECTED", "REASON"]
    assert re.search(rf"  {TIME} \((\d+ (s|min) ago|just now)\)  ", first), first


def test_paused_and_silenced_show_in_the_state_column(daemon: DaemonProcess) -> None:
    def state() -> str:
        rows = rollbackctl(daemon, "status").stdout.splitlines()
        (row,) = [r for r in rows if r.startswith("web ")]
        return row

    assert ", paused" not in state()
    assert rollbackctl(daemon, "pause", "web", "--for", "10m", "--reason", "t").returncode == 0
    assert rollbackctl(daemon, "silence", "--for", "10m", "--reason", "t").returncode == 0
    try:
        assert ", paused, silenced" in state()
        up = rollbackctl(daemon, "status").stdout.splitlines()[0]
        assert re.match(r"rollbackd pid \d+, up \d+(\.\d)? s|rollbackd pid \d+, up \d+ ms", up), up
    finally:
        assert rollbackctl(daemon, "resume", "web").returncode == 0
        assert rollbackctl(daemon, "resume").returncode == 0


# --- completion and man pages ----------------------------------------------------------------------


def test_completion_and_man_pages_are_generated_from_the_parsers() -> None:
    files = generated()
    assert sorted(str(p) for p in files) == [
        "share/bash-completion/completions/rollbackctl", "share/bash-completion/completions/rollbackd",
        "share/man/man1/rollbackctl.1", "share/man/man1/rollbackd.1",
        "share/zsh/site-functions/_rollbackctl", "share/zsh/site-functions/_rollbackd"]
    for rel, text in files.items():
        assert (ROOT / rel).read_text() == text, (
            f"{rel} is stale: run `python -m rollbackd.daemon.control.ctl_docs`")
    assert "--scenario" in files[Path("share/zsh/site-functions/_rollbackctl")]
    assert "known\\-good" in files[Path("share/man/man1/rollbackctl.1")]


def test_bash_completion_completes_commands(tmp_path: Path) -> None:
    script = ROOT / "share/bash-completion/completions/rollbackctl"
    probe = (f"source {script}; COMP_WORDS=(rollbackctl inc); COMP_CWORD=1; "
             "COMP_LINE='rollbackctl inc'; COMP_POINT=${#COMP_LINE}; "
             "_shtab_rollbackctl rollbackctl inc rollbackctl; printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["incidents"], out.stderr

