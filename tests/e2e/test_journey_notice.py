"""A user journey failing after its log-in: on-call is told once per episode, nothing is changed.

A daemon process, its journey probe against the real sample app (fault injection on), the real
SMTP sink. The login step passes, the project step gets HTTP 500: no incident class claims that
(no rollback, no restore), but a person must hear of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SmtpSink, wait_for
from tests.sampleapp.conftest import PASSWORD, USERS, Deployment, deploy

pytestmark = pytest.mark.e2e

STEPS = [
    {"name": "log in", "method": "POST", "path": "/api/auth/login",
     "json": {"email": USERS[0], "password": "{password}"}, "capture": {"token": "$.token"}},
    {"name": "create a project", "method": "POST", "path": "/api/projects",
     "headers": {"Authorization": "Bearer {token}"}, "json": {"name": "uat"},
     "expect_status": 201, "capture": {"project": "$.id"}},
    {"name": "delete the project", "method": "DELETE", "path": "/api/projects/{project}",
     "headers": {"Authorization": "Bearer {token}"}},
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Deployment]:
    dep = deploy(tmp_path / "app-base")
    try:
        dep.start()
        dep.wait_healthy()
        yield dep
    finally:
        dep.teardown()


def config(app: Deployment, smtp: SmtpSink, tmp_path: Path) -> str:
    secret = tmp_path / "uat-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    state = tmp_path / "state"
    steps = "".join(
        "\n[[targets.web.probes.uat.steps]]\n"
        + "".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _table(v)}\n"
                  for k, v in step.items()) for step in STEPS)
    return f"""
[daemon]
state_dir = "{state}"
socket = "{state / 'control.sock'}"
metrics_address = ""

[smtp]
host = "127.0.0.1"
port = {smtp.port}
from = "rollbackd@localhost"

[contacts.oncall]
emails = ["oncall@example.com"]

[contacts.devops]
emails = ["devops-lead@example.com"]

[targets.web.probes.uat]
kind = "journey"
base_url = "{app.url}"
interval = "500ms"
timeout = "10s"
failure_threshold = 2
secrets = {{ password = "{secret}" }}
{steps}"""


def _table(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in d.items()) + " }"


def fault(app: Deployment, **body: Any) -> None:
    assert httpx.post(f"{app.url}/_fault", json=body, timeout=10).status_code == 200


def test_a_later_step_failing_mails_oncall_once_per_episode_and_changes_nothing(
        app: Deployment, smtp: SmtpSink, start_daemon: Any, tmp_path: Path) -> None:
    d = start_daemon(config(app, smtp, tmp_path))

    def uat() -> str:
        return str(d.result("status")["targets"][0]["probes"]["uat"])

    wait_for(lambda: uat() == "passing", 30, f"the journey passes\n{d.log_text()}")

    fault(app, mode="500", paths=["/api/projects"])
    wait_for(lambda: len(smtp.messages) == 1, 30, f"one mail\n{d.log_text()}")
    wait_for(lambda: uat() == "failing", 10, "the journey fails")
    runs_then = app.log_text().count('"POST /api/projects')
    wait_for(lambda: app.log_text().count('"POST /api/projects') >= runs_then + 4, 30,
             "four more failing runs")
    assert len(smtp.messages) == 1  # once per episode, not per run
    (to, msg), = smtp.messages
    assert sorted(to) == ["oncall@example.com"]
    assert " ".join(smtp.subjects[0].split()) == (
        "[rollbackd] web: user journey fails at 'create a project' (probe uat), nothing changed")
    status = d.result("status")["targets"][0]
    assert (status["state"], status["incident"]) == ("ok", None)
    assert status["attention"] == ["uat: user journey fails at 'create a project'"]
    assert d.result("incidents") == []

    # Passing again ends the episode; the next failure is news again.
    fault(app, mode="none")
    wait_for(lambda: uat() == "passing", 30, "the journey passes again")
    assert d.result("status")["targets"][0]["attention"] == []
    fault(app, mode="500", paths=["/api/projects"])
    wait_for(lambda: len(smtp.messages) == 2, 30, f"a second mail\n{d.log_text()}")
    ids = {m["Message-ID"] for _, m in smtp.messages}
    assert len(ids) == 2
    assert d.result("incidents") == []
