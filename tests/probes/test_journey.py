"""journey against the real sample app: the runbook's user acceptance test, step by step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.metrics import Metrics
from rollbackd.daemon.monitor import TargetMonitor
from rollbackd.policies.classify import IncidentClass, classify, probe_account_trouble
from rollbackd.policies.debounce import ProbeHealth
from rollbackd.policies.settings import PolicySettings
from rollbackd.probes.journey import JourneyProbe, JourneySettings
from rollbackd.probes.observation import Observation, Status, Symptom
from rollbackd.probes.registry import build_probe
from tests.probes.servers import HttpServer, Reply, Request
from tests.sampleapp.conftest import PASSWORD, Deployment, deploy

ADMIN, USER = "admin@example.org", "alice@example.org"
USER_PASSWORD = "a different user's password"

# The runbook's journey: log in as admin, as a user, create a project, submit a grading job,
# read it back, clean up.
STEPS: list[dict[str, Any]] = [
    {"name": "login as admin", "method": "POST", "path": "/api/auth/login",
     "json": {"email": ADMIN, "password": "{admin_password}"}, "capture": {"admin": "$.token"}},
    {"name": "login as user", "method": "POST", "path": "/api/auth/login",
     "json": {"email": USER, "password": "{user_password}"}, "capture": {"token": "$.token"}},
    {"name": "create a project", "method": "POST", "path": "/api/projects",
     "headers": {"Authorization": "Bearer {token}"}, "json": {"name": "uat"},
     "expect_status": 201, "expect_json": {"$.name": "uat"}, "capture": {"project": "$.id"}},
    {"name": "submit a grading job", "method": "POST", "path": "/api/projects/{project}/jobs",
     "headers": {"Authorization": "Bearer {token}"}, "json": {"submission": "print(42)"},
     "expect_status": 201, "capture": {"job": "$.id"}},
    {"name": "read the job back", "path": "/api/jobs/{job}",
     "headers": {"Authorization": "Bearer {token}"},
     "expect_json": {"$.status": "graded", "$.score": 9}},
    {"name": "delete the project", "method": "DELETE", "path": "/api/projects/{project}",
     "headers": {"Authorization": "Bearer {token}"}},
]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = deploy(tmp_path_factory.mktemp("journey"))
    dep.run("seed.py", ADMIN, PASSWORD, "--admin")
    dep.run("seed.py", USER, USER_PASSWORD)
    try:
        dep.start()
        dep.wait_healthy()
        yield dep
    finally:
        dep.teardown()


@pytest.fixture
def fault(app: Deployment) -> Iterator[Any]:
    with httpx.Client(base_url=app.url, timeout=10.0) as http:
        def inject(**body: Any) -> None:
            assert http.post("/_fault", json=body).status_code == 200
        yield inject
        http.post("/_fault", json={"mode": "none"})  # never leak a fault into the next test


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    files = {"admin_password": PASSWORD, "user_password": USER_PASSWORD}
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    return {name: tmp_path / name for name in files}


def settings(url: str, secrets: dict[str, Path], steps: list[dict[str, Any]] | None = None,
             **extra: Any) -> JourneySettings:
    return JourneySettings.model_validate({"kind": "journey", "base_url": url,
                                           "secrets": {k: str(v) for k, v in secrets.items()},
                                           "steps": STEPS if steps is None else steps, **extra})


async def walk(url: str, secrets: dict[str, Path], steps: list[dict[str, Any]] | None = None,
               **extra: Any) -> Observation:
    probe = build_probe("uat", settings(url, secrets, steps, **extra))
    assert isinstance(probe, JourneyProbe)
    try:
        return await probe.check()
    finally:
        await probe.http.aclose()


def requests(app: Deployment, method: str, prefix: str) -> int:
    """Requests the app logged, as `METHOD /path...`."""
    return app.log_text().count(f'"{method} {prefix}')


async def test_the_whole_journey_passes_and_cleans_up(app: Deployment,
                                                      secrets: dict[str, Path]) -> None:
    created, deleted = requests(app, "POST", '/api/projects"'), requests(app, "DELETE", "/api/")
    obs = await walk(app.url, secrets)
    assert (obs.status, obs.symptom, obs.kind) == (Status.OK, None, "journey")
    assert obs.detail.startswith("6 steps passed in ")
    assert obs.metrics["steps_passed"] == 6.0
    assert requests(app, "POST", '/api/projects"') == created + 1
    assert requests(app, "DELETE", "/api/") == deleted + 1
    # Cleaned up: the project the journey made (the newest id) is gone.
    with httpx.Client(base_url=app.url, timeout=10.0) as http:
        token = http.post("/api/auth/login",
                          json={"email": USER, "password": USER_PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        made = http.post("/api/projects", json={"name": "probe"}, headers=auth).json()["id"]
        assert http.get(f"/api/projects/{made - 2}", headers=auth).status_code == 404
        assert http.delete(f"/api/projects/{made}", headers=auth).status_code == 200


async def test_captured_values_flow_into_later_steps(app: Deployment,
                                                     secrets: dict[str, Path]) -> None:
    # The job is read back under the captured id and token; a literal token is refused.
    steps = [dict(s) for s in STEPS]
    steps[4] = {**steps[4], "headers": {"Authorization": "Bearer not-the-token"}}
    obs = await walk(app.url, secrets, steps)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.STEP_FAILED)
    assert obs.detail.startswith("step 'read the job back': HTTP 401 in "), obs.detail
    assert obs.detail.endswith(", expected 200")
    assert obs.metrics["steps_passed"] == 4.0


async def test_a_wrong_password_names_the_login_step(app: Deployment, tmp_path: Path,
                                                     secrets: dict[str, Path]) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    obs = await walk(app.url, {**secrets, "admin_password": wrong})
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.WRONG_CREDENTIALS)
    assert obs.detail.startswith("step 'login as admin': HTTP 401 in "), obs.detail
    assert obs.metrics["steps_passed"] == 0.0


@pytest.mark.parametrize(("path", "step", "passed"), [
    pytest.param("/api/projects", "create a project", 2, id="create"),
    pytest.param("/api/jobs", "read the job back", 4, id="read-back"),
])
async def test_a_500_on_a_later_step_names_that_step(app: Deployment, secrets: dict[str, Path],
                                                     fault: Any, path: str, step: str,
                                                     passed: int) -> None:
    fault(mode="500", paths=[path])
    obs = await walk(app.url, secrets)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.STEP_FAILED)
    assert obs.detail.startswith(f"step {step!r}: HTTP 500 in "), obs.detail
    assert obs.detail.endswith(", expected 201" if step == "create a project" else
                               ", expected 200")
    assert obs.metrics["steps_passed"] == float(passed)


async def test_the_marked_login_step_is_judged_as_login(app: Deployment,
                                                        secrets: dict[str, Path],
                                                        fault: Any) -> None:
    steps = [STEPS[0], {**STEPS[1], "login": True}, *STEPS[2:]]
    fault(mode="500", paths=["/api/auth/login"])
    obs = await walk(app.url, secrets, steps)
    # The first step is no longer the login step: its 500 is a failing step, not auth_broken.
    assert (obs.symptom, obs.detail[:30]) == (Symptom.STEP_FAILED, "step 'login as admin': HTTP 50")
    obs = await walk(app.url, secrets, steps[1:])
    assert (obs.symptom, obs.detail[:30]) == (Symptom.SERVER_ERROR, "step 'login as user': HTTP 500")


async def test_secrets_and_tokens_never_show(server: HttpServer, tmp_path: Path) -> None:
    """An app that echoes what it got, and a step whose failure quotes the answer."""
    token = "tok-" + "x" * 40

    def echo(req: Request) -> Reply:
        if req.path == "/login":
            return Reply(json={"token": token})
        return Reply(json={"got": json.loads(req.body), "auth": req.headers["Authorization"]})

    server.respond = echo
    (tmp_path / "pw").write_text("s3cret-password\n")
    steps = [{"name": "login", "method": "POST", "path": "/login", "capture": {"t": "$.token"}},
             {"name": "echo", "method": "POST", "path": "/echo", "headers": {
                 "Authorization": "Bearer {t}"}, "json": {"password": "{pw}"},
              "expect_json": {"$.got": "x"}},
             {"name": "echo token", "method": "POST", "path": "/echo", "json": {"p": 1},
              "headers": {"Authorization": "{t}"}, "expect_json": {"$.auth": "x"}}]
    obs = await walk(server.url, {"pw": tmp_path / "pw"}, steps)
    assert obs.detail == ("step 'echo': HTTP 200 in "
                          f"{obs.detail.split(' in ')[1].split(' ms')[0]} ms, but $.got is "
                          '{"password": "<password>"}, expected "x"')
    assert json.loads(server.requests[1].body) == {"password": "s3cret-password"}
    obs = await walk(server.url, {"pw": tmp_path / "pw"}, [steps[0], steps[2]])
    assert "<password>" in obs.detail and token not in obs.detail, obs.detail


async def test_cookies_are_kept_and_captured(server: HttpServer) -> None:
    def app(req: Request) -> Reply:
        if req.path == "/login":
            return Reply(json={}, headers={"Set-Cookie": "session=abc123; Path=/"})
        cookie = req.headers.get("Cookie")
        return Reply(status=200 if cookie == "session=abc123" else 401, json={"c": cookie})

    server.respond = app
    steps = [{"name": "login", "method": "POST", "path": "/login",
              "capture": {"session": "cookie:session"}},
             {"name": "page", "path": "/page/{session}"}]
    obs = await walk(server.url, {}, steps)
    assert obs.status is Status.OK, obs.detail
    assert [r.path for r in server.requests] == ["/login", "/page/abc123"]


def test_config_errors_name_the_step() -> None:
    with pytest.raises(ValidationError, match=r"steps\[1\] \('b'\) uses \{token\}, which"):
        settings("http://127.0.0.1:1", {}, [{"name": "a", "path": "/"},
                                           {"name": "b", "path": "/{token}"}])
    with pytest.raises(ValidationError, match="capture 'token'"):
        settings("http://127.0.0.1:1", {}, [{"name": "a", "path": "/",
                                            "capture": {"t": "token"}}])
    with pytest.raises(ValidationError, match="at most one step is the login step"):
        settings("http://127.0.0.1:1", {}, [{"name": "a", "path": "/", "login": True},
                                           {"name": "b", "path": "/", "login": True}])
    with pytest.raises(ValidationError, match="step names must differ"):
        settings("http://127.0.0.1:1", {}, [{"name": "a", "path": "/"},
                                           {"name": "a", "path": "/"}])


def _health(symptom: Symptom) -> dict[str, tuple[str, ProbeHealth]]:
    return {"uat": ("journey", ProbeHealth(failing=True, failures=3, symptom=symptom))}


def test_what_a_failing_journey_means_to_the_decision_tree() -> None:
    # A later step: no incident class, so no plan at all (nothing restored, nothing rolled back).
    assert classify(_health(Symptom.STEP_FAILED)) is None
    assert probe_account_trouble(_health(Symptom.STEP_FAILED)) == {}
    # The login step: as the login probe.
    assert classify(_health(Symptom.SERVER_ERROR)) == (IncidentClass.AUTH_BROKEN, ["uat"])
    assert classify(_health(Symptom.SLOW)) == (IncidentClass.PERF_DEGRADED, ["uat"])
    assert classify(_health(Symptom.WRONG_CREDENTIALS)) is None
    assert probe_account_trouble(_health(Symptom.WRONG_CREDENTIALS)) == {
        "uat": Symptom.WRONG_CREDENTIALS}


def _toml(value: Any) -> str:
    """A TOML value (inline tables for dicts) from the JSON-like STEPS."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


async def test_post_rollback_verification_runs_the_journey(app: Deployment, tmp_path: Path,
                                                           secrets: dict[str, Path],
                                                           fault: Any) -> None:
    steps = "".join("[[targets.web.probes.uat.steps]]\n"
                    + "".join(f"{k} = {_toml(v)}\n" for k, v in step.items()) for step in STEPS)
    cfg = parse_config(
        f'[targets.web.probes.health]\nkind = "http_health"\nurl = "{app.url}/health"\n'
        f'[targets.web.probes.uat]\nkind = "journey"\nbase_url = "{app.url}"\n'
        f'secrets = {{ admin_password = "{secrets["admin_password"]}", '
        f'user_password = "{secrets["user_password"]}" }}\n{steps}')
    journal = Journal(tmp_path / "journal.sqlite3")
    try:
        m = TargetMonitor("web", cfg.targets["web"], PolicySettings(), journal,
                          Outbox(journal, cfg), Metrics(CollectorRegistry()), tmp_path / "reports")
        fault(mode="500", paths=["/api/jobs"])
        before = requests(app, "GET", "/api/jobs/")
        ok, detail = await m.verify(0.5)
        assert not ok
        assert "uat (step 'read the job back': HTTP 500 in " in detail, detail
        assert "health" not in detail.split("still failing")[1]
        # One pass within 0.5 s (verify pauses a second between passes): one journey run.
        assert requests(app, "GET", "/api/jobs/") == before + 1
        fault(mode="none")
        before = requests(app, "GET", "/api/jobs/")
        assert await m.verify(10.0) == (True, "all 2 probes pass")
        assert requests(app, "GET", "/api/jobs/") == before + 1
    finally:
        journal.close()
