"""Real daemon processes: mail survives a restart; and no secret in any mail, report, log, metric."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace, free_port
from tests.conftest import DaemonProcess, known_good, wait_for
from tests.escalation.conftest import SMTP_PASSWORD, SMTP_USER, CertFiles, MailServer

pytestmark = pytest.mark.e2e

DSN_PASSWORD = "dsn-Pa55-e2e-31c"
SMTP_BLOCK = 'from = "rollbackd@localhost"\n'


@pytest.fixture
def server_later() -> Iterator[MailServer]:
    server = MailServer()
    yield server
    server.stop()


def outbox_rows(d: DaemonProcess) -> list[sqlite3.Row]:
    with closing(d.db()) as db:
        return db.execute("SELECT * FROM outbox ORDER BY id").fetchall()


def test_a_daemon_restarted_while_mail_waits_sends_it_once(
    workspace: Workspace, start_daemon: Callable[..., DaemonProcess], server_later: MailServer
) -> None:
    ws = workspace
    ws.deploy_broken()  # never healthy, so nothing is known-good: the daemon escalates
    d = start_daemon(ws.config_toml(server_later.port))
    inc = wait_for(lambda: d.result("incidents"), 20, "incident")[0]
    assert inc["state"] == "escalated"
    wait_for(lambda: any(r["attempts"] for r in outbox_rows(d)), 20, "a failed send")
    assert d.stop() == 0
    assert [r["sent_at"] for r in outbox_rows(d)] == [None]

    server_later.start()
    d.start()
    wait_for(lambda: not [r for r in outbox_rows(d) if r["sent_at"] is None], 30,
             f"queued mail sent\n{d.log_text()}")
    assert d.stop() == 0
    pairs = server_later.box.pairs()
    assert sorted(pairs) == sorted(
        (rcpt, f"<rollbackd.{inc['id']}.opened@{mid.split('@')[1]}") for rcpt, mid in pairs)
    assert Counter(r for r, _ in pairs) == {"oncall@example.com": 1, "devops-lead@example.com": 1}
    assert "escalated" in str(server_later.deliveries[0].msg["Subject"])


@pytest.fixture
def starttls_server(cert: CertFiles) -> Iterator[MailServer]:
    server = MailServer("starttls", cert).start()
    yield server
    server.stop()


def secret_config(ws: Workspace, tmp_path: Path, server: MailServer, cert: CertFiles,
                  metrics_port: int) -> tuple[str, dict[str, str]]:
    """The workspace config with STARTTLS + AUTH, a login probe, the key probe and a DSN."""
    files = {"smtp": SMTP_PASSWORD, "login": DEMO_USER[1],
             "dsn": f"postgresql://grading:{DSN_PASSWORD}@127.0.0.1:1/grading"}
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
        (tmp_path / name).chmod(0o600)
    text = ws.config_toml(server.port).replace(
        SMTP_BLOCK, SMTP_BLOCK + f'starttls = true\nusername = "{SMTP_USER}"\n'
        f'password_file = "{tmp_path / "smtp"}"\nca_file = "{cert.cert}"\n'
    ).replace('metrics_address = ""', f'metrics_address = "127.0.0.1:{metrics_port}"')
    text += f"""
[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{tmp_path / 'login'}"
interval = "500ms"
timeout = "1s"
failure_threshold = 3

[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
interval = "1s"

[targets.grading.accounts]
dsn_file = "{tmp_path / 'dsn'}"

[contacts.emergency]
emails = ["cto@example.com"]
"""
    secrets = {"smtp password": SMTP_PASSWORD, "login password": DEMO_USER[1],
               "dsn password": DSN_PASSWORD, "dsn": files["dsn"],
               "fernet key": ws.env()["DB_ENCRYPTION_KEY"]}
    return text, secrets


def test_no_secret_in_any_mail_report_log_line_or_metric(
    workspace: Workspace, start_daemon: Callable[..., DaemonProcess], tmp_path: Path,
    starttls_server: MailServer, cert: CertFiles
) -> None:
    ws = workspace
    ws.start()
    metrics_port = free_port()
    text, secrets = secret_config(ws, tmp_path, starttls_server, cert, metrics_port)
    d = start_daemon(text)
    good = ws.head()
    wait_for(lambda: known_good(d, good), 30, f"v1 known-good\n{d.log_text()}")
    ws.deploy_broken()
    inc = wait_for(lambda: next((i for i in d.result("incidents") if i["state"] == "resolved"),
                                None), 60, f"incident resolved\n{d.log_text()}")
    wait_for(lambda: len(starttls_server.deliveries) >= 2, 20, "opened and resolved mails")
    assert all(x.user == SMTP_USER for x in starttls_server.deliveries)  # AUTH over STARTTLS

    produced: dict[str, str] = {}
    for i, x in enumerate(starttls_server.deliveries):
        produced[f"mail {i} {x.msg['Subject']}"] = x.raw.decode(errors="replace")
    produced["show --report"] = d.result("show", id=inc["id"], report=True)["markdown"]
    produced["show"] = json.dumps(d.result("show", id=inc["id"]), default=str)
    produced["status"] = json.dumps(d.result("status"), default=str)
    produced["metrics"] = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert d.stop() == 0
    produced["log"] = d.log_text()
    for report in sorted((d.state_dir / "reports").iterdir()):
        produced[f"report {report.name}"] = report.read_text()
    with closing(d.db()) as db:
        for table in ("outbox", "incidents", "timeline", "steps", "audit"):
            produced[f"journal {table}"] = json.dumps(
                [list(r) for r in db.execute(f"SELECT * FROM {table}")], default=str)

    # The run did produce all of these, so finding nothing means something.
    assert {"report incident-1.md", "report incident-1.json"} <= set(produced)
    assert "rollbackd_" in produced["metrics"] and "status=sent" in produced["log"]
    assert "## Preventive measures" in produced["show --report"]
    leaks = [(where, what) for where, content in produced.items()
             for what, secret in secrets.items() if secret in content]
    assert leaks == []
