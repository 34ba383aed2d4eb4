"""login against a real server that checks credentials, locks accounts and breaks on demand."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rollbackd.probes.login import LoginProbe, LoginSettings
from rollbackd.probes.observation import Observation, Status, Symptom
from tests.probes.servers import HttpServer, Pki, Reply, Request, free_port

EMAIL = "probe@example.org"
PASSWORD = "correct horse battery staple"


@dataclass
class LoginApp:
    """The grading app's login endpoint, reduced to what the probe can tell apart."""

    passwords: dict[str, str] = field(default_factory=lambda: {EMAIL: PASSWORD})
    locked: set[str] = field(default_factory=set)
    fault: Reply | None = None
    fields: tuple[str, str] = ("email", "password")

    def __call__(self, req: Request) -> Reply:
        if self.fault is not None:
            return self.fault
        if req.method != "POST" or req.path != "/api/auth/login":
            return Reply(status=404)
        try:
            body = req.json()
            email, password = body[self.fields[0]], body[self.fields[1]]
        except (ValueError, KeyError, TypeError):
            return Reply(status=400, json={"error": "expected JSON email and password"})
        if email in self.locked:
            return Reply(status=423, json={"error": "account locked"})
        if self.passwords.get(email) != password:
            return Reply(status=401, json={"error": "invalid credentials"})
        return Reply(json={"token": "t0k3n"})


@pytest.fixture
def app(server: HttpServer) -> LoginApp:
    app = LoginApp()
    server.respond = app
    return app


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "probe-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def probe(url: str, password_file: Path, **kw: Any) -> LoginProbe:
    kw.setdefault("timeout", 2.0)
    settings = LoginSettings(url=url + "/api/auth/login", email=EMAIL, password_file=password_file,
                             **kw)
    return LoginProbe("login", settings)


async def check(url: str, password_file: Path, **kw: Any) -> Observation:
    return await probe(url, password_file, **kw).check()


async def test_known_good_account_logs_in(server: HttpServer, app: LoginApp,
                                          password_file: Path) -> None:
    obs = await check(server.url, password_file)
    assert obs.status is Status.OK and obs.symptom is None, obs.detail
    assert obs.detail.startswith(f"login as {EMAIL} got HTTP 200 in ")
    assert obs.metrics["latency_seconds"] > 0 and obs.metrics["http_status"] == 200
    sent = server.requests[-1]
    assert sent.method == "POST" and sent.headers["Content-Type"] == "application/json"
    assert sent.json() == {"email": EMAIL, "password": PASSWORD}  # trailing newline dropped


async def test_custom_field_names(server: HttpServer, app: LoginApp, password_file: Path) -> None:
    app.fields = ("username", "passphrase")
    assert (await check(server.url, password_file)).symptom is Symptom.BAD_RESPONSE
    obs = await check(server.url, password_file, email_field="username",
                      password_field="passphrase")
    assert obs.ok, obs.detail


async def test_wrong_credentials_then_repaired(server: HttpServer, app: LoginApp,
                                               password_file: Path) -> None:
    app.passwords[EMAIL] = "changed by a bad migration"
    obs = await check(server.url, password_file)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.WRONG_CREDENTIALS)
    assert "HTTP 401" in obs.detail and obs.detail.endswith(": probe credentials refused.")
    app.passwords[EMAIL] = PASSWORD  # the database rollback
    assert (await check(server.url, password_file)).ok


async def test_forbidden_counts_as_wrong_credentials(server: HttpServer, app: LoginApp,
                                                     password_file: Path) -> None:
    app.fault = Reply(status=403)
    assert (await check(server.url, password_file)).symptom is Symptom.WRONG_CREDENTIALS


async def test_password_file_is_read_at_each_check(server: HttpServer, app: LoginApp,
                                                   password_file: Path) -> None:
    p = probe(server.url, password_file)
    password_file.write_text("stale password")
    assert (await p.check()).symptom is Symptom.WRONG_CREDENTIALS
    password_file.write_text(PASSWORD)
    assert (await p.check()).ok


async def test_locked_account_then_unlocked(server: HttpServer, app: LoginApp,
                                            password_file: Path) -> None:
    app.locked.add(EMAIL)
    obs = await check(server.url, password_file)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.ACCOUNT_LOCKED)
    assert "HTTP 423" in obs.detail and obs.detail.endswith(": probe account locked.")
    app.locked.clear()
    assert (await check(server.url, password_file)).ok


@pytest.mark.parametrize(("fault", "symptom"), [
    pytest.param(Reply(status=500), Symptom.SERVER_ERROR, id="500"),
    pytest.param(Reply(status=502), Symptom.SERVER_ERROR, id="502"),
    pytest.param(Reply(status=400), Symptom.BAD_RESPONSE, id="400"),
    pytest.param(Reply(status=404), Symptom.BAD_RESPONSE, id="404"),
    pytest.param(Reply(status=302, headers={"Location": "/sso"}), Symptom.BAD_RESPONSE,
                 id="redirect"),
    pytest.param(Reply(status=429), Symptom.BAD_RESPONSE, id="429"),
    pytest.param(Reply(hang=True), Symptom.TIMEOUT, id="hang"),
    pytest.param(Reply(drop=True), Symptom.UNREACHABLE, id="disconnect"),
])
async def test_server_faults_then_repaired(server: HttpServer, app: LoginApp, password_file: Path,
                                           fault: Reply, symptom: Symptom) -> None:
    app.fault = fault
    obs = await check(server.url, password_file, timeout=0.3)
    assert (obs.status, obs.symptom) == (Status.FAIL, symptom), obs.detail
    app.fault = None
    assert (await check(server.url, password_file)).ok


async def test_slow_login(server: HttpServer, app: LoginApp, password_file: Path) -> None:
    app.fault = Reply(json={"token": "t"}, delay=0.2)
    obs = await check(server.url, password_file, max_latency="50ms")
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.SLOW)
    assert obs.detail.endswith("slower than the 50 ms limit.")
    app.fault = Reply(status=401, delay=0.2)  # a refusal is a refusal, however slow
    assert (await check(server.url, password_file, max_latency="50ms")).symptom \
        is Symptom.WRONG_CREDENTIALS
    app.fault = None
    assert (await check(server.url, password_file, max_latency="1s")).ok


async def test_refused_connection_then_back(password_file: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    obs = await check(url, password_file)
    assert (obs.status, obs.symptom) == (Status.FAIL, Symptom.UNREACHABLE)
    assert obs.detail.endswith("Connection refused.")
    with HttpServer(port=port) as srv:
        srv.respond = LoginApp()
        assert (await check(url, password_file)).ok


async def test_login_over_tls(pki: Pki, password_file: Path) -> None:
    with HttpServer(tls=pki.server_context()) as srv:
        srv.respond = LoginApp()
        assert (await check(srv.url, password_file, ca_file=pki.ca)).ok
        obs = await check(srv.url, password_file)
        assert obs.symptom is Symptom.UNREACHABLE and "verify failed" in obs.detail


async def test_unreadable_password_file_is_a_probe_error(server: HttpServer, app: LoginApp,
                                                         tmp_path: Path) -> None:
    obs = await check(server.url, tmp_path / "missing")
    assert (obs.status, obs.symptom) == (Status.ERROR, Symptom.PROBE_ERROR)
    assert obs.detail == f"cannot read the password file '{tmp_path / 'missing'}': " \
                         "No such file or directory."
    assert server.requests == []  # no half-configured login attempt reached the app
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in (await check(server.url, binary)).detail
    # An empty password would earn a 401 that the app would be blamed (and rolled back) for.
    empty = tmp_path / "empty"
    empty.write_text("\n")
    obs = await check(server.url, empty)
    assert obs.status is Status.ERROR and obs.detail.endswith("is empty.")
    assert server.requests == []


async def test_the_password_never_leaves_the_probe(server: HttpServer, app: LoginApp,
                                                   password_file: Path) -> None:
    p = probe(server.url, password_file)
    seen = [repr(p), repr(p.settings), str(p.settings.model_dump()), p.settings.model_dump_json()]
    for fault in (None, Reply(status=401), Reply(status=500), Reply(hang=True), Reply(drop=True)):
        app.fault = fault
        obs = await probe(server.url, password_file, timeout=0.3).check()
        seen += [obs.detail, repr(obs), json.dumps(dict(obs.metrics))]
    for text in seen:
        assert PASSWORD not in text
        assert "horse" not in text


def test_settings_hold_only_the_password_path(password_file: Path) -> None:
    settings = LoginSettings(url="http://127.0.0.1/login", email=EMAIL, password_file=password_file)
    assert settings.password_file == password_file
    with pytest.raises(ValidationError, match="must be an absolute path"):
        LoginSettings(url="http://127.0.0.1/login", email=EMAIL, password_file="pw.txt")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="Extra inputs"):
        LoginSettings(url="http://127.0.0.1/login", email=EMAIL, password_file=password_file,
                      password=PASSWORD)  # type: ignore[call-arg]


# -- a second known-good account tells the probe's own trouble from broken login -----------------

SECOND = "second@example.org"


@pytest.fixture
def second_file(tmp_path: Path, app: LoginApp) -> Path:
    app.passwords[SECOND] = "second password"
    path = tmp_path / "second-password"
    path.write_text("second password\n")
    return path


@pytest.mark.parametrize(("break_it", "symptom", "ends"), [
    pytest.param(lambda a: a.locked.add(EMAIL), Symptom.ACCOUNT_LOCKED,
                 f"second account {SECOND} got HTTP 200: only the probe account is affected.",
                 id="probe-locked-second-logs-in"),
    pytest.param(lambda a: a.passwords.__setitem__(EMAIL, "x"), Symptom.WRONG_CREDENTIALS,
                 f"second account {SECOND} got HTTP 200: only the probe account is affected.",
                 id="probe-refused-second-logs-in"),
    pytest.param(lambda a: a.passwords.update({EMAIL: "x", SECOND: "y"}), Symptom.LOGINS_REFUSED,
                 f"second account {SECOND} got HTTP 401: both known-good accounts refused.",
                 id="both-refused"),
    pytest.param(lambda a: a.locked.update({EMAIL, SECOND}), Symptom.ACCOUNT_LOCKED,
                 f"second account {SECOND} got HTTP 423.", id="both-locked"),
])
async def test_second_account_decides_whose_trouble_it_is(
        server: HttpServer, app: LoginApp, password_file: Path, second_file: Path,
        break_it: Any, symptom: Symptom, ends: str) -> None:
    break_it(app)
    obs = await check(server.url, password_file, second_email=SECOND,
                      second_password_file=second_file)
    assert (obs.status, obs.symptom) == (Status.FAIL, symptom), obs.detail
    assert obs.detail.endswith(ends), obs.detail
    assert "second password" not in obs.detail
    assert len(server.requests) == 2


async def test_second_account_is_not_asked_while_the_probe_account_logs_in(
        server: HttpServer, app: LoginApp, password_file: Path, second_file: Path) -> None:
    obs = await check(server.url, password_file, second_email=SECOND,
                      second_password_file=second_file)
    assert obs.ok, obs.detail
    assert len(server.requests) == 1


def test_second_email_needs_its_password_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="set both or neither"):
        LoginSettings(url="http://127.0.0.1:1/login", email=EMAIL,
                      password_file=tmp_path / "p", second_email=SECOND)
