"""Clock steps, for the daemon's process only: durations that decide hold in either direction.

The machine's clock is never touched. Each test runs the daemon's own code in a child process
with walloffset.so preloaded (built here with gcc from walloffset.c), which adds the seconds
written in a file to that process's CLOCK_REALTIME and nothing else, exactly as a step of the
system clock would look to it: the boot-time clock goes on undisturbed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the clock-step harness (Debian package gcc)"
    out = tmp_path_factory.mktemp("shim") / "walloffset.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "walloffset.c"),
                    "-ldl"], check=True, capture_output=True, timeout=60)
    return out


def run_stepped(shim: Path, offset_file: Path, code: str) -> dict[str, Any]:
    """Run `code` (which prints one JSON line last) with the wall clock stepped by the file."""
    env = {**os.environ, "LD_PRELOAD": str(shim), "WALL_OFFSET_FILE": str(offset_file),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


STEP_MID_RUN = """
    import json, sys, time
    from datetime import timedelta
    from rollbackd.daemon.clock import now_utc, stepped
    from rollbackd.policies.decision import History
    from rollbackd.policies.settings import PolicySettings
    step, path = float(sys.argv[1]) if len(sys.argv) > 1 else {step}, {path!r}
    before_ours, before_wall = now_utc(), time.time()
    open(path, "w").write(str(step))
    time.sleep(0.3)
    after_ours, after_wall = now_utc(), time.time()
    cooldown = PolicySettings().cooldown
    print(json.dumps({{
        "ours": (after_ours - before_ours).total_seconds(),
        "wall": after_wall - before_wall,
        "stepped": stepped(),
        # The rollback at `before` and a bad deploy a moment later: still in the cooldown?
        "in_cooldown": after_ours - before_ours < timedelta(seconds=cooldown),
    }}))
"""


@pytest.mark.parametrize("step", [7200.0, -7200.0], ids=["forward-2h", "back-2h"])
def test_a_step_while_running_moves_no_duration(shim: Path, tmp_path: Path,
                                                step: float) -> None:
    offset = tmp_path / "offset"
    offset.write_text("0")
    seen = run_stepped(shim, offset, STEP_MID_RUN.format(step=step, path=str(offset)))
    assert abs(seen["wall"] - step) < 5  # the process's system clock did step...
    assert 0 <= seen["ours"] < 5  # ...the daemon's clock only moved by the real time
    assert seen["in_cooldown"] is True  # so a cooldown begun a moment ago still holds
    assert seen["stepped"] is not None and abs(seen["stepped"] - step) < 5


RUN = """
    import json, sys, time
    from pathlib import Path
    from rollbackd.daemon.clock import CLOCK, now_utc
    how = CLOCK.continue_from(Path({state!r}))
    print(json.dumps({{"how": how, "ours": now_utc().timestamp(), "wall": time.time()}}))
"""


@pytest.mark.parametrize("step", [7200.0, -7200.0], ids=["forward-2h", "back-2h"])
def test_a_step_while_the_daemon_was_down_moves_no_duration(shim: Path, tmp_path: Path,
                                                            step: float) -> None:
    offset, state = tmp_path / "offset", tmp_path / "state"
    state.mkdir()
    offset.write_text("0")
    first = run_stepped(shim, offset, RUN.format(state=str(state)))
    offset.write_text(str(step))  # stepped while no daemon ran
    second = run_stepped(shim, offset, RUN.format(state=str(state)))
    assert "first start" in first["how"] or "no earlier anchor" in first["how"]
    assert second["how"] == "continued from the previous run of this boot"
    assert abs((second["wall"] - first["wall"]) - step) < 10
    assert 0 <= second["ours"] - first["ours"] < 10  # a restart later, not two hours


MARKED = """
    import json, time
    from pathlib import Path
    from rollbackd.daemon.journal import Journal
    j = Journal(Path({db!r}))
    inc = j.incidents.open("web", "app_down", "x", None, {{}})
    j.incidents.add_event(inc, "before", "no step yet")
    open({path!r}, "w").write("7200")
    time.sleep(0.3)
    j.incidents.add_event(inc, "during", "stepped now")
    print(json.dumps({{e: d for _, e, d in j.incidents.timeline(inc)}}))
"""


def test_events_written_during_a_step_say_so(shim: Path, tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("0")
    events = run_stepped(shim, offset, MARKED.format(db=str(tmp_path / "j.sqlite3"),
                                                       path=str(offset)))
    assert events["before"] == "no step yet"
    assert events["during"] == ("stepped now [system clock +7200s from rollbackd's, which did "
                                "not step]")


def test_a_stored_time_in_the_future_counts_as_now() -> None:
    from datetime import timedelta

    from rollbackd.daemon.clock import now_utc, reconcile

    now = now_utc()
    assert reconcile(now + timedelta(hours=2), now) == now
    assert reconcile(now - timedelta(hours=2), now) == now - timedelta(hours=2)
    assert reconcile(None, now) is None
