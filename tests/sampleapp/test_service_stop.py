"""service.stop() right after start() stops the app: none is left running as an orphan."""

from __future__ import annotations

import os
from pathlib import Path

from rollbackd.daemon.demo.sampleapp import service

APP = "import time\ntime.sleep(120)\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_stop_right_after_start_leaves_no_app_running(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text(APP)
    pidfile, started = tmp_path / "app.pid", []
    try:
        # The race (a pid checked while the child is still inside exec) hit 4 in 10 before.
        for _ in range(30):
            started.append(service.start(tmp_path / "app", pidfile, tmp_path / "app.log"))
            assert service.stop(pidfile) is True
            assert not pidfile.exists()
        assert [pid for pid in started if _alive(pid)] == []
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, 9)
