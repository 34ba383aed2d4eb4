"""`rollbackd demo --keep` leaves a config whose mail reaches a local maildir sink started as
printed, and whose metrics are on."""

from __future__ import annotations

import shlex
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from rollbackd.daemon.config import load_config
from rollbackd.daemon.demo.main import _kept
from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e


def test_kept_config_mails_to_a_maildir_and_serves_metrics(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    (ws.root / "rollbackd.toml").write_text(ws.config_toml(2525))
    printed = _kept(ws.root)
    config = load_config(ws.root / "rollbackd.toml")
    assert config.daemon.metrics_address.startswith("127.0.0.1:")
    assert config.smtp.port != 2525
    assert f"curl -s http://{config.daemon.metrics_address}/metrics" in printed
    (sink_line,) = [line.strip() for line in printed.splitlines() if "-m aiosmtpd" in line]
    argv = shlex.split(sink_line.removesuffix("&").strip())
    assert argv[0] == sys.executable and f"127.0.0.1:{config.smtp.port}" in argv
    sink = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def sent() -> bool:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = config.smtp.sender, "oncall@example.com", "t"
            msg.set_content("kept")
            try:
                with smtplib.SMTP("127.0.0.1", config.smtp.port, timeout=5) as smtp:
                    smtp.send_message(msg)
            except OSError:
                return False
            return True

        wait_for(sent, 20, "the maildir sink accepting mail")
        assert len(list((ws.root / "mail" / "new").iterdir())) == 1
    finally:
        sink.terminate()
        sink.wait(10)
