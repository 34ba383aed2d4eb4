"""The self check on its own: which errors are the daemon's, episodes, one mail each, the gauge."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from rollbackd.daemon.escalation.notices import Notice, NoticeKind
from rollbackd.daemon.selfcheck import REASONS, Limits, SelfCheck, own_fault, raise_fd_limit
from rollbackd.probes.observation import Observation, Status, Symptom


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failed(detail: str, probe: str = "health") -> Observation:
    return Observation(probe, "http_health", Status.FAIL, detail, 0.01, Symptom.UNREACHABLE)


def passed() -> Observation:
    return Observation("health", "http_health", Status.OK, "200 OK", 0.01)


def gauge(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("rollbackd_self_degraded", {"reason": reason})


@pytest.fixture
def world(tmp_path: Path) -> tuple[SelfCheck, Clock, list[tuple[str, str, str]],
                                   CollectorRegistry]:
    clock, mails, registry = Clock(), [], CollectorRegistry()
    check = SelfCheck(tmp_path, registry, mails.append, Limits(), clock)
    return check, clock, mails, registry


@pytest.mark.parametrize(("detail", "reason"), [
    pytest.param("cannot connect to 127.0.0.1:8000: Too many open files.", "descriptors",
                 id="EMFILE"),
    pytest.param("probe error: OSError: [Errno 23] Too many open files in system", "descriptors",
                 id="ENFILE"),
    pytest.param("probe crashed: OSError: [Errno 12] Cannot allocate memory", "memory",
                 id="ENOMEM"),
    pytest.param("probe crashed: MemoryError: ", "memory", id="MemoryError"),
    pytest.param("cannot connect to 127.0.0.1:8000: Connection refused.", None, id="app down"),
    pytest.param("HTTP 503 from /health", None, id="app 503"),
    pytest.param("127.0.0.1:8000 gave no answer within 1s.", None, id="timeout"),
])
def test_which_errors_are_the_daemons_own(detail: str, reason: str | None) -> None:
    assert own_fault(detail) == reason


def test_a_probe_out_of_descriptors_is_the_daemons_fault_not_the_apps(world) -> None:
    check, clock, mails, registry = world
    assert check.judge(passed()) is False
    assert check.judge(failed("cannot connect to 127.0.0.1:1: Connection refused.")) is False
    assert check.degraded is None and mails == []

    assert check.judge(failed("cannot connect to 127.0.0.1:1: Too many open files.")) is True
    assert check.degraded == "descriptors"
    assert gauge(registry, "descriptors") == 1 and gauge(registry, "disk") == 0
    # Meanwhile nothing counts, passing or failing.
    assert check.judge(passed()) is True
    assert check.judge(failed("Connection refused.")) is True
    assert len(mails) == 1
    (notice,) = mails
    assert notice.kind is NoticeKind.SELF_DEGRADED and notice.key == str(check._episode)
    assert notice.event == f"self-degraded-{check._episode}"  # one Message-ID per episode
    assert "(descriptors)" in notice.subject and "Too many open files" in notice.body


def test_one_mail_per_episode_and_the_episode_ends_after_clear_after(world) -> None:
    check, clock, mails, registry = world
    for _ in range(5):  # a burst of faults within one episode
        check.judge(failed("Too many open files"))
        clock.now += 2
    assert len(mails) == 1
    clock.now += Limits().clear_after - 2 - 0.1
    check.check()
    assert check.degraded == "descriptors"
    clock.now += 0.2
    check.check()
    assert check.degraded is None and gauge(registry, "descriptors") == 0
    assert check.judge(passed()) is False
    check.note("loop_lag", "the event loop ran 3.0s late")
    assert len(mails) == 2 and "(loop_lag)" in mails[1].subject


def test_a_mail_the_journal_cannot_take_is_retried_once_it_can(tmp_path: Path) -> None:
    clock, mails, tries = Clock(), [], []

    def tell(m: Notice) -> None:
        tries.append(m)
        if len(tries) == 1:
            raise OSError(24, "Too many open files")
        mails.append(m)

    check = SelfCheck(tmp_path, CollectorRegistry(), tell, Limits(), clock)
    check.note("descriptors", "cannot open even one more")
    assert mails == []
    check.check()
    check.check()
    assert len(tries) == 2 and len(mails) == 1


def test_loop_lag_is_seen_by_the_next_observation_before_the_check_wakes(world) -> None:
    check, clock, mails, _ = world
    check._due = clock.now + 1.0  # run() is asleep until then
    clock.now += 1.0 + Limits().loop_lag + 0.5  # the loop was blocked meanwhile
    # A probe that timed out because the loop was blocked reaches the monitor first.
    assert check.judge(failed("127.0.0.1:1 gave no answer within 1s.")) is True
    assert check.degraded == "loop_lag"


@pytest.mark.parametrize(("limits", "reason"), [
    pytest.param(Limits(fd_reserve=10**9), "descriptors", id="descriptors"),
    pytest.param(Limits(disk_min_free=2**62, disk_min_share=1.0), "disk", id="disk"),
    pytest.param(Limits(memory_min_available=2**62), "memory", id="memory"),
])
def test_periodic_checks(tmp_path: Path, limits: Limits, reason: str) -> None:
    registry = CollectorRegistry()
    check = SelfCheck(tmp_path, registry, None, limits)
    check.check()
    assert check.degraded == reason
    assert [r for r in REASONS if gauge(registry, r) == 1] == [reason]


async def test_a_command_that_cannot_be_spawned_is_the_daemons_fault(tmp_path: Path) -> None:
    check = SelfCheck(tmp_path, CollectorRegistry())
    await check.check_spawn()
    assert check.degraded is None
    check._true = str(tmp_path / "no-such-command")
    await check.check_spawn()
    assert check.degraded == "spawn"


async def test_run_checks_periodically_until_cancelled(tmp_path: Path) -> None:
    check = SelfCheck(tmp_path, CollectorRegistry(), None, Limits(disk_min_free=2**62, disk_min_share=1.0))
    task = asyncio.create_task(check.run())
    while check.degraded is None:
        await asyncio.sleep(0.01)
    task.cancel()
    assert check.degraded == "disk"


def test_raise_fd_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
