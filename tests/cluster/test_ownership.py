"""Ownership among real daemons on one real PostgreSQL: spread, status, refusal, rebalance."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Cluster, query, wait_for

pytestmark = pytest.mark.e2e


def probe_only(ws_url: str, *names: str) -> str:
    """Targets that only probe the sample app (no deployment): cheap extra targets."""
    return "".join(f"""
[targets.{n}.probes.health]
kind = "http_health"
url = "{ws_url}/health"
interval = "500ms"
timeout = "1s"
""" for n in names)


def owners(c: Cluster, targets: list[str]) -> dict[str, str | None]:
    return {t: c.owner(t) for t in targets}


def test_three_targets_spread_over_three_instances_and_status_names_the_owners(
        cluster: Cluster) -> None:
    c = cluster
    extra = probe_only(c.ws.url, "alpha", "beta")
    targets = ["alpha", "beta", "grading"]
    for name in ("a", "b", "c"):
        c.start(name, c.config(name, targets_extra=extra))
    wait_for(lambda: None not in owners(c, targets).values()
             and len(set(owners(c, targets).values())) == 3, 20,
             f"one target per instance: {owners(c, targets)}")
    got = owners(c, targets)
    for inst in c.started:
        status = inst.status()
        assert status["instance"] == inst.name
        shown = {t["target"]: t["owner"] for t in status["targets"]}
        assert shown == got
        mine = [t for t, o in got.items() if o == inst.name]
        probed = [t["target"] for t in status["targets"]
                  if any(s != "pending" for s in t["probes"].values())]
        wait_for(lambda inst=inst, mine=mine: sorted(
            t["target"] for t in inst.status()["targets"]
            if any(s != "pending" for s in t["probes"].values())) == mine, 10,
            f"{inst.name} probes only its own target {mine} (probed: {probed})")


def test_a_rollback_asked_of_a_non_owner_is_refused_naming_the_owner(cluster: Cluster) -> None:
    c = cluster
    a = c.start("a", c.config("a"))
    assert c.wait_owner("grading") == "a"
    b = c.start("b", c.config("b"))
    reply = b.daemon.ctl("rollback", target="grading")
    assert reply["ok"] is False and reply["code"] == "not_owner"
    assert "owned by instance a" in reply["error"]
    audit = query(c.dsn, "SELECT cmd, outcome FROM audit ORDER BY id DESC LIMIT 1")[0]
    assert audit == {"cmd": "rollback", "outcome": "error:not_owner"}
    assert a.owner_of("grading") == "a"


def test_a_second_instance_gets_its_share_when_it_joins(cluster: Cluster) -> None:
    c = cluster
    extra = probe_only(c.ws.url, "alpha")
    c.start("a", c.config("a", targets_extra=extra))
    wait_for(lambda: owners(c, ["alpha", "grading"]) == {"alpha": "a", "grading": "a"}, 20,
             "a alone owns both")
    c.start("b", c.config("b", targets_extra=extra))
    wait_for(lambda: sorted(o or "-" for o in owners(c, ["alpha", "grading"]).values())
             == ["a", "b"], 20, f"one each: {owners(c, ['alpha', 'grading'])}")
    terms = query(c.dsn, "SELECT target, owner, end_reason FROM cluster_terms"
                  " WHERE end_reason IS NOT NULL")
    assert [t["end_reason"] for t in terms] == ["rebalanced"]


def test_status_renders_the_owner_column(cluster: Cluster) -> None:
    from rollbackd.daemon.control.ctl_output import human

    c = cluster
    a = c.start("a", c.config("a"))
    c.wait_owner("grading")
    text = human("status", a.status())
    assert "instance a" in text
    header, row = text.splitlines()[2:4]
    assert header.split()[:3] == ["TARGET", "OWNER", "STATE"]
    assert row.split()[:2] == ["grading", "a"]


def test_a_reload_adding_a_target_gets_it_owned_and_probed(cluster: Cluster) -> None:
    import os
    import signal

    c = cluster
    a = c.start("a", c.config("a"))
    c.wait_owner("grading")
    a.daemon.config.write_text(c.config("a", targets_extra=probe_only(c.ws.url, "alpha")))
    assert a.daemon.proc is not None
    os.kill(a.daemon.proc.pid, signal.SIGHUP)
    assert c.wait_owner("alpha") == "a"
    wait_for(lambda: {t["target"]: t["probes"]["health"] for t in a.status()["targets"]}
             == {"grading": "passing", "alpha": "passing"}, 10, "both probed after the reload")
