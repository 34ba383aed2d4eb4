"""Load, the 60-second version of `bench/load.py --minutes 10` (the documented long run):
500 targets x 3 probes, a storm of 100 incidents each rolled back, 1,000 control requests at
once, against one real daemon process; with the lower bar of a shared 2-CPU machine.

Nothing lost (every journaled mail delivered once per recipient, every storm-held mail in a
delivered digest), nothing run twice (one incident per storm target, every step done once,
every restart command run once), mails bounded, every control request answered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_load_for_a_minute(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--minutes", "1",
                          "--warmup", "5", "--bar", "test", "--json", str(out)],
                         capture_output=True, text=True, timeout=280)
    report = res.stdout + res.stderr
    assert out.exists(), report
    figures = json.loads(out.read_text())
    print(report)  # the table, for -s runs and CI logs
    assert figures["failed"] == [], report
    assert res.returncode == 0, report
    assert figures["ctl_answered"] == 1000 and figures["storm_incidents"] == 100
    assert figures["mails_lost"] == 0 and figures["steps_done_twice"] == 0
