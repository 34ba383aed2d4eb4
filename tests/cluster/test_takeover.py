"""Takeover among real daemons on one real PostgreSQL: kill -9 the owner mid-rollback, cut its
database connection; another instance takes over in bounded time and holds the interrupted
incident; no two instances act for a target at once, no step runs twice, no mail goes twice."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cluster.conftest import (
    Cluster,
    Instance,
    TcpProxy,
    hanging_restart,
    kill_orphans,
    log_lines,
    parse_log_time,
    query,
    restart_runs,
    wait_for,
)
from tests.conftest import SmtpSink

pytestmark = pytest.mark.e2e

TAKEOVER = 5.0  # daemon.takeover_after in these tests
FENCE = TAKEOVER / 5  # Timing.fence_after


def known_good(c: Cluster, version: str) -> bool:
    rows = query(c.dsn, "SELECT known_good_at FROM ledger WHERE version = %s", (version,))
    return bool(rows and rows[0]["known_good_at"])


def start_pair(c: Cluster, tmp_path: Path, first_dsn: str | None = None
               ) -> tuple[Instance, Instance, Path]:
    """a owns grading (it starts first), b stands by; both restart through the hanging
    command, which records who ran it."""
    argv_a, marker = hanging_restart(tmp_path, "a")
    argv_b, _ = hanging_restart(tmp_path, "b")
    a = c.start("a", c.config("a", dsn=first_dsn, restart_argv=argv_a))
    assert c.wait_owner("grading") == "a"
    b = c.start("b", c.config("b", restart_argv=argv_b))
    return a, b, marker


def break_it(c: Cluster, marker: Path) -> int:
    """Deploy a broken v2 once v1 is known-good; returns when the owner's restart step hangs."""
    wait_for(lambda: known_good(c, c.ws.head()), 20, "v1 known-good")
    c.ws.deploy_broken()
    wait_for(marker.exists, 30, "the restart step to start")
    rows = query(c.dsn, "SELECT incident_id, state FROM steps WHERE name = 'restart_service'")
    assert [r["state"] for r in rows] == ["running"]
    return int(rows[0]["incident_id"])


def terms(c: Cluster, target: str = "grading") -> list[dict[str, Any]]:
    return query(c.dsn, "SELECT * FROM cluster_terms WHERE target = %s ORDER BY epoch", (target,))


def assert_no_overlap(c: Cluster, incident: int) -> None:
    """From the lease terms and the journal's steps: terms never overlap (each new owner
    started after the previous one's last renewal + its fence time), and every step started
    and finished inside one term, so no two instances ran steps at overlapping times."""
    ts = terms(c)
    for prev, nxt in zip(ts, ts[1:], strict=False):
        assert nxt["active_at"] is not None
        latest_prev = prev["ended_at"] or prev["heartbeat_at"] + timedelta(seconds=FENCE)
        assert latest_prev <= nxt["active_at"], (prev, nxt)
    windows = [(t["active_at"], t["ended_at"] or t["heartbeat_at"] + timedelta(seconds=FENCE))
               for t in ts if t["active_at"]]
    steps = query(c.dsn, "SELECT * FROM steps WHERE incident_id = %s ORDER BY id", (incident,))
    for s in steps:
        started = _dt(s["started_at"])
        owning = [w for w in windows if w[0] <= started <= w[1]]
        assert len(owning) == 1, (s, windows)
        if s["state"] in ("done", "failed"):  # finished by the owner that started it
            assert _dt(s["finished_at"]) <= owning[0][1], (s, owning)


def _dt(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def assert_once(c: Cluster, incident: int, smtp: SmtpSink) -> None:
    steps = query(c.dsn, "SELECT name FROM steps WHERE incident_id = %s", (incident,))
    twice = [n for n, k in Counter(s["name"] for s in steps).items() if k > 1]
    assert twice == [], f"steps run twice: {twice}"
    ids = Counter(str(m["Message-ID"]) for _, m in smtp.messages)
    assert [i for i, k in ids.items() if k > 1] == [], f"mails sent twice: {ids}"


def test_kill9_owner_mid_rollback_the_other_takes_over_and_holds_it(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    a, b, marker = start_pair(c, tmp_path)
    incident = break_it(c, marker)
    assert restart_runs(marker)[0][1] == "a"
    killed = time.time()
    a.daemon.kill9()
    kill_orphans(marker)

    assert c.wait_owner("grading", TAKEOVER + 5, among=("b",)) == "b"
    inc = wait_for(lambda: next((i for i in b.daemon.result("incidents")
                                 if i["id"] == incident and i["state"] == "held"), None),
                   10, "the interrupted incident held by b")
    show = b.daemon.result("show", id=inc["id"])
    states = {s["name"]: s["state"] for s in show["steps"]}
    assert states["restart_service"] == "interrupted"
    assert "verify" not in states
    new = terms(c)[-1]
    assert new["owner"] == "b"
    took = new["active_at"].timestamp() - killed
    print(f"\ntakeover after kill -9 (2 instances): {took:.2f} s")
    assert took < TAKEOVER, f"took over after {took:.2f}s"
    wait_for(lambda: any("HELD" in s for s in c.smtp.subjects), 15, "the held mail")
    time.sleep(2)  # b keeps probing the broken app: the held incident owns the target
    assert [who for _, who, _ in restart_runs(marker)] == ["a"]
    assert len(b.daemon.result("incidents")) == 1
    assert_no_overlap(c, incident)
    assert_once(c, incident, c.smtp)


def test_owner_whose_lock_session_is_terminated_stops_before_the_other_starts(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    a, b, marker = start_pair(c, tmp_path)
    incident = break_it(c, marker)
    pid = query(c.dsn, "SELECT backend_pid FROM cluster_instances WHERE instance = 'a'")[0]
    cut = time.time()
    query(c.dsn, "SELECT pg_terminate_backend(%s)", (pid["backend_pid"],))

    assert c.wait_owner("grading", TAKEOVER + 5, among=("b",)) == "b"
    stopped = wait_for(lambda: log_lines(a, "target=grading status=stopped"), 5, "a stopped")
    new = terms(c)[-1]
    assert parse_log_time(stopped[0]) < new["active_at"], (stopped[0], new)
    print(f"\ntakeover after pg_terminate_backend: {new['active_at'].timestamp() - cut:.2f} s")
    assert new["active_at"].timestamp() - cut < TAKEOVER
    # a's cancelled restart was killed with its process group, and a journaled nothing: the
    # step stayed `running` until b, the new owner, interrupted it and held the incident.
    wait_for(lambda: b.daemon.result("show", id=incident)["state"] == "held", 10, "held by b")
    step = query(c.dsn, "SELECT * FROM steps WHERE name = 'restart_service'")[0]
    assert step["state"] == "interrupted"
    assert _dt(step["finished_at"]) >= new["active_at"]
    assert "lost" in step["detail"] or step["detail"] == "" \
        or "instance that owned the target" in step["detail"], step["detail"]
    pid_a = restart_runs(marker)[0][0]
    wait_for(lambda: not Path(f"/proc/{pid_a}").exists(), 5, "a's restart command killed")
    # a comes back as a standby: connected again, owning nothing.
    wait_for(lambda: len(log_lines(a, "instance=a status=connected")) >= 2, 10, "a reconnected")
    assert a.daemon.proc is not None and a.daemon.proc.poll() is None
    assert [who for _, who, _ in restart_runs(marker)] == ["a"]
    assert_no_overlap(c, incident)
    assert_once(c, incident, c.smtp)


def test_owner_cut_off_behind_a_proxy_stops_before_the_other_starts(
        cluster: Cluster, tmp_path: Path, postgresql_proc: Any) -> None:
    c = cluster
    proxy = TcpProxy(postgresql_proc.port)
    try:
        via_proxy = c.dsn.replace(f":{postgresql_proc.port}/", f":{proxy.port}/")
        a, b, marker = start_pair(c, tmp_path, first_dsn=via_proxy)
        incident = break_it(c, marker)
        cut = time.time()
        proxy.cut()
        assert c.wait_owner("grading", TAKEOVER + 5, among=("b",)) == "b"
        stopped = wait_for(lambda: log_lines(a, "target=grading status=stopped"), 5,
                           "a stopped")
        new = terms(c)[-1]
        assert parse_log_time(stopped[0]) < new["active_at"], (stopped[0], new)
        print(f"\ntakeover after the proxy cut: {new['active_at'].timestamp() - cut:.2f} s")
        assert new["active_at"].timestamp() - cut < TAKEOVER
        wait_for(lambda: b.daemon.result("show", id=incident)["state"] == "held", 10, "held")
        proxy.mend()
        wait_for(lambda: len(log_lines(a, "instance=a status=connected")) >= 2, 15,
                 f"a reconnected as a standby\n{a.daemon.log_text()[-2000:]}")
        assert c.owner("grading") == "b"
        assert [who for _, who, _ in restart_runs(marker)] == ["a"]
        assert_no_overlap(c, incident)
        assert_once(c, incident, c.smtp)
    finally:
        proxy.close()


def test_the_database_sees_one_lock_session_per_live_instance(cluster: Cluster) -> None:
    c = cluster
    for name in ("a", "b"):
        c.start(name, c.config(name))
    rows = query(c.dsn, "SELECT application_name FROM pg_stat_activity"
                 " WHERE application_name LIKE 'rollbackd-lock %%' ORDER BY 1")
    assert [r["application_name"] for r in rows] == ["rollbackd-lock a", "rollbackd-lock b"]
    with psycopg.connect(c.dsn) as db:
        assert db.execute("SHOW server_version_num").fetchone()[0] >= "140000"  # type: ignore[index]


def test_three_instances_kill9_the_owner_mid_rollback_one_survivor_takes_over(
        cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    extra = "".join(f"""
[targets.{n}.probes.health]
kind = "http_health"
url = "{c.ws.url}/health"
interval = "500ms"
""" for n in ("alpha", "beta"))
    targets = ("alpha", "beta", "grading")
    marker = hanging_restart(tmp_path, "a")[1]
    insts = {n: c.start(n, c.config(n, restart_argv=hanging_restart(tmp_path, n)[0],
                                     targets_extra=extra)) for n in ("a", "b", "c")}
    wait_for(lambda: sorted(str(c.owner(t)) for t in targets) == ["a", "b", "c"], 20,
             "one target each")
    owner = c.owner("grading")
    assert owner is not None
    incident = break_it(c, marker)
    assert restart_runs(marker)[0][1] == owner
    killed = time.time()
    insts[owner].daemon.kill9()
    kill_orphans(marker)
    survivors = tuple(n for n in insts if n != owner)
    assert c.wait_owner("grading", TAKEOVER + 5, among=survivors) in survivors
    new = terms(c)[-1]
    print(f"\ntakeover after kill -9 (3 instances): {new['active_at'].timestamp() - killed:.2f} s")
    assert new["active_at"].timestamp() - killed < TAKEOVER
    heir = insts[str(new["owner"])]
    wait_for(lambda: heir.daemon.result("show", id=incident)["state"] == "held", 10, "held")
    owned = sorted(str(c.owner(t)) for t in targets)
    assert sorted(set(owned)) == sorted(survivors) and len(owned) == 3  # 2 + 1
    time.sleep(2)
    assert [who for _, who, _ in restart_runs(marker)] == [owner]
    assert_no_overlap(c, incident)
    assert_once(c, incident, c.smtp)
