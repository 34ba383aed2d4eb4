"""Test first's judgement (pure) and its config: what counts as faster, what is refused."""

from __future__ import annotations

import pytest

from rollbackd.daemon.config import ConfigError, parse_config
from rollbackd.daemon.rollback.candidate import read_env_file
from rollbackd.daemon.rollback.candidate_settings import GitTestFirst
from rollbackd.daemon.rollback.latency_trial import Round, judge

S = GitTestFirst(start=["app"], port=8080, spare_port=8081, port_env="PORT", max_latency=0.3)


def rounds(live: float, candidate: float, n: int = 5) -> list[Round]:
    return [Round(live, candidate) for _ in range(n)]


@pytest.mark.parametrize(("live", "candidate", "settings", "faster", "says"), [
    pytest.param(0.45, 0.01, S, True, "faster", id="fast-candidate"),
    pytest.param(0.45, 0.45, S, False, "above the latency limit 300 ms", id="as-slow"),
    pytest.param(0.45, 0.40, S.model_copy(update={"max_latency": None}), False,
                 "not faster", id="barely-faster-no-limit"),
    pytest.param(0.02, 0.02, S, False, "not faster", id="live-is-not-slow"),
    pytest.param(0.45, 0.31, S, False, "above the latency limit", id="just-over-the-limit"),
    pytest.param(0.45, 0.30, S, True, "faster", id="at-the-limit"),
])
def test_judge(live: float, candidate: float, settings: GitTestFirst, faster: bool,
               says: str) -> None:
    v = judge(rounds(live, candidate), settings)
    assert v.faster is faster and says in v.why, v.why


def test_one_slow_answer_in_twenty_is_the_p95() -> None:
    found = [Round(0.45, 0.01)] * 19 + [Round(0.45, 0.5)]
    assert judge(found, S).faster  # nearest-rank p95 of 20 values is the 19th
    assert not judge([*found, Round(0.45, 0.5)], S).faster


def test_env_file_reads_as_systemd_does(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "env"
    path.write_text("# comment\nA=1\n B = \"two words\" \n;x\nC='3'\nnoequals\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "3"}


BASE = """[daemon]\nstate_dir = "/tmp/s"\n[targets.t.deployment]\nrepo = "/srv/app"
restart = ["true"]\n[targets.t.probes.h]\nkind = "http_health"\nurl = "http://127.0.0.1:1/"
[targets.t.deployment.test_first]\nstart = ["python3", "app.py"]\nport_env = "PORT"\n"""


@pytest.mark.parametrize(("extra", "error"), [
    pytest.param("port = 8080\nspare_port = 8080\n", "spare_port must differ from port",
                 id="same-port"),
    pytest.param("port = 8080\n", "spare_port", id="no-spare-port"),
    pytest.param("port = 8080\nspare_port = 8081\nfaster_ratio = 1.5\n", "faster_ratio",
                 id="ratio-above-1"),
])
def test_config_errors_name_the_key(extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + extra, "r.toml")
    assert "targets.t.deployment" in str(exc.value) and error in str(exc.value), str(exc.value)


def test_test_first_is_a_capability_only_when_configured() -> None:
    from rollbackd.daemon.rollback.git_service import GitServiceExecutor
    from rollbackd.policies.plans import Capability

    cfg = parse_config(BASE + "port = 8080\nspare_port = 8081\n", "r.toml")
    ex = GitServiceExecutor(cfg.targets["t"].deployment)  # type: ignore[arg-type]
    assert [s.name for s in ex.capabilities()[Capability.DEPLOYMENT_TEST_FIRST]] == [
        "start_candidate", "probe_candidate", "stop_candidate", "git_checkout",
        "install_dependencies", "restart_service"]
    plain = parse_config(BASE.split("[targets.t.deployment.test_first]")[0], "r.toml")
    assert Capability.DEPLOYMENT_TEST_FIRST not in GitServiceExecutor(
        plain.targets["t"].deployment).capabilities()  # type: ignore[arg-type]


async def test_a_reused_pid_is_never_signalled(tmp_path: object) -> None:
    """The record's start time no longer matches the PID's: someone else's process, left alone
    (and the safety check's control: with the matching start time it is stopped)."""
    import asyncio
    import json
    import subprocess
    from pathlib import Path

    from rollbackd.daemon.rollback.candidate import Candidates, start_time

    receipts = Path(str(tmp_path)) / "receipts"
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = start_time(other.pid)
        assert started is not None
        c = Candidates(Path(str(tmp_path)), S)
        home = c.home(receipts)
        home.mkdir(parents=True)
        record = {"worktree": str(home / "gone"), "commit": "c0ffee", "pid": other.pid}
        (home / "1.json").write_text(json.dumps({**record, "started": started + 1}))
        assert "had exited" in await c.stop(receipts, 1)
        assert other.poll() is None and start_time(other.pid) == started  # untouched
        (home / "2.json").write_text(json.dumps({**record, "started": started}))
        assert f"stopped the candidate (pid {other.pid}, SIGTERM)" in await c.stop(receipts, 2)
        await asyncio.to_thread(other.wait, 5)
        assert other.returncode == -15
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
