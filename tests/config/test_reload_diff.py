"""Which keys a reload leaves for a restart, and that the running values stay in force."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.reload_diff import as_applied, unapplied

PROBE = '[targets.web.probes.health]\nkind = "http_health"\nurl = "http://127.0.0.1:9/"\n'


def token(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


CASES = [
    pytest.param("", "", [], id="nothing-changed"),
    pytest.param('[daemon]\nmetrics_address = "127.0.0.1:9617"\n',
                 '[daemon]\nmetrics_address = "127.0.0.1:9700"\n',
                 ["daemon.metrics_address: '127.0.0.1:9617' -> '127.0.0.1:9700' (needs a restart; "
                  "'127.0.0.1:9617' stays)"], id="metrics-address"),
    pytest.param('[daemon]\nsocket = "/run/a.sock"\nstate_dir = "/var/lib/a"\n',
                 '[daemon]\nsocket = "/run/b.sock"\nstate_dir = "/var/lib/b"\n',
                 ["daemon.state_dir: '/var/lib/a' -> '/var/lib/b' (needs a restart; '/var/lib/a' "
                  "stays)", "daemon.socket: '/run/a.sock' -> '/run/b.sock' (needs a restart; "
                  "'/run/a.sock' stays)"], id="socket-and-state-dir"),
    pytest.param("[daemon]\nallowed_uids = [1000]\n", "[daemon]\nallowed_uids = [1000, 1001]\n",
                 ["daemon.allowed_uids: [1000] -> [1000, 1001] (needs a restart; [1000] stays)"],
                 id="allowed-uids"),
    pytest.param("[daemon]\ntest_hooks = false\n", "[daemon]\ntest_hooks = true\n", [],
                 id="test-hooks-apply-live"),
    pytest.param("", '[daemon]\nlog_level = "debug"\n',
                 ["daemon.log_level: 'info' -> 'debug' (needs a restart; 'info' stays)"],
                 id="log-level"),
    pytest.param(PROBE.replace("web", "api"), "", [], id="targets-apply-live"),
]


@pytest.mark.parametrize(("before", "after", "expected"), CASES)
def test_unapplied(before: str, after: str, expected: list[str]) -> None:
    old, new = parse_config(before + PROBE), parse_config(after + PROBE)
    assert [str(u) for u in unapplied(old, new)] == expected


def test_alerts_listener_and_token(tmp_path: Path) -> None:
    a = token(tmp_path, "a", "a" * 20)
    b = token(tmp_path, "b", "b" * 20)
    old = parse_config(f'[alerts]\nlisten = "127.0.0.1:9618"\ntoken_file = "{a}"\n' + PROBE)
    new = parse_config(f'[alerts]\nlisten = "127.0.0.1:9700"\ntoken_file = "{b}"\n' + PROBE)
    assert [str(u) for u in unapplied(old, new)] == [
        "alerts.listen: '127.0.0.1:9618' -> '127.0.0.1:9700' (needs a restart; '127.0.0.1:9618' "
        "stays)",
        f"alerts.token_file: secret {a} -> secret {b} (needs a restart; secret {a} stays)"]
    # The token's content changing behind the same file name counts too; the value is not shown.
    (tmp_path / "a").write_text("c" * 20)
    again = parse_config(f'[alerts]\nlisten = "127.0.0.1:9618"\ntoken_file = "{a}"\n' + PROBE)
    (changed,) = unapplied(old, again)
    assert (changed.key, changed.old, changed.new) == ("alerts.token_file", f"secret {a}",
                                                       f"secret {a}")
    assert "a" * 20 not in str(changed) and "c" * 20 not in str(changed)
    assert [str(u) for u in unapplied(old, parse_config(PROBE))] == [
        "alerts: on -> off (needs a restart; on stays)"]


def test_as_applied_keeps_the_running_values_and_takes_the_rest() -> None:
    old = parse_config('[daemon]\nmetrics_address = ""\n' + PROBE)
    new = parse_config('[daemon]\nmetrics_address = "127.0.0.1:9700"\ntest_hooks = true\n'
                       + PROBE + 'interval = "3s"\n')
    applied = as_applied(old, new)
    assert applied.daemon.metrics_address == "" and applied.daemon.test_hooks is True
    assert applied.targets["web"].probes["health"].interval == 3.0
    assert unapplied(old, applied) == []
