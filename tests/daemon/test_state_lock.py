"""One daemon per state directory: a second real `rollbackd run` on the same config exits 1
naming the holder's PID, touches neither the socket nor the journal, and the first carries on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from rollbackd.daemon.statelock import LOCK_NAME, StateDirInUse, StateLock
from tests.conftest import DaemonProcess, SmtpSink

pytestmark = pytest.mark.e2e


@pytest.fixture
def first(tmp_path: Path) -> Iterator[DaemonProcess]:
    ws = Workspace.create(tmp_path / "ws")  # the app is never started: the target just fails
    smtp = SmtpSink()
    smtp.controller.start()
    config = tmp_path / "rollbackd.toml"
    config.write_text(ws.config_toml(smtp.port, state_dir=tmp_path / "state"))
    d = DaemonProcess(config, tmp_path / "state" / "control.sock", tmp_path / "state",
                      tmp_path / "first.log")
    try:
        yield d.start()
    finally:
        d.stop()
        smtp.controller.stop()


def run_second(d: DaemonProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rollbackd.daemon.cli", "run", "--config", str(d.config)],
                          capture_output=True, text=True, timeout=60)


def test_a_second_daemon_on_the_same_state_dir_exits_1_and_the_first_keeps_its_socket(
        first: DaemonProcess) -> None:
    assert first.proc is not None
    socket_inode = first.socket.stat().st_ino
    journal_size = (first.state_dir / "journal.sqlite3").stat().st_size

    second = run_second(first)

    assert second.returncode == 1, (second.stdout, second.stderr)
    lock = first.state_dir / LOCK_NAME
    assert second.stderr == (f"rollbackd: state directory {first.state_dir} is in use by pid "
                             f"{first.proc.pid} (lock {lock})\n")
    assert "control status=listening" not in second.stdout + second.stderr
    # The first daemon's socket is the same file, still served by the first daemon.
    assert first.socket.stat().st_ino == socket_inode
    assert first.result("status")["pid"] == first.proc.pid
    assert first.proc.poll() is None
    assert (first.state_dir / "journal.sqlite3").stat().st_size >= journal_size


def test_the_lock_is_free_again_after_the_holder_stops_or_is_killed(
        first: DaemonProcess) -> None:
    assert first.proc is not None
    first.kill9()  # the kernel drops the flock with the process: no stale lock to clean up
    again = first.start()
    assert again.proc is not None
    assert again.result("status")["pid"] == again.proc.pid
    assert (first.state_dir / LOCK_NAME).read_text() == f"{again.proc.pid}\n"
    assert again.stop() == 0
    second = first.start()  # a clean stop releases it too
    assert second.proc is not None and second.proc.poll() is None


def test_the_lock_is_per_process_and_names_its_holder(tmp_path: Path) -> None:
    held = StateLock.acquire(tmp_path)
    with pytest.raises(StateDirInUse) as refused:
        StateLock.acquire(tmp_path)  # flock is per open file: a second open in-process fails too
    assert refused.value.pid == os.getpid()
    held.release()
    StateLock.acquire(tmp_path).release()
    assert (tmp_path / LOCK_NAME).read_text() == ""
