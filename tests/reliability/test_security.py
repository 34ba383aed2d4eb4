"""Security: no shell anywhere in the source (by the AST), no secret in any output of an
end-to-end run, and files created with private modes.

The control socket refusing peers that are not allowed is tested in
tests/daemon/test_control_socket.py (test_a_peer_whose_uid_is_not_allowed_is_forbidden,
test_rollbackctl_of_a_forbidden_uid_reports_forbidden) and tests/control/test_socket_access.py;
the deploy-rollback secret scan (STARTTLS + AUTH, mails, report, log, metrics, journal tables) in
tests/escalation/test_daemon_mail.py. This file adds what those leave out.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import DEMO_USER, Workspace, free_port
from tests.conftest import DaemonProcess, known_good, wait_for
from tests.escalation.conftest import SMTP_PASSWORD, SMTP_USER, CertFiles, MailServer
from tests.recovery.support import db_path, wait_healthy
from tests.reliability.support import (
    counted,
    incident_in,
    integrity_ok,
    journal_rows,
    runs,
    toml_argv,
    unsent,
    wait_exit,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("rollbackd/daemon", "rollbackd/probes", "rollbackd/policies")

# -- no shell: an AST check, so that aliases, getattr and keyword spellings are caught too -----

SHELL_FUNCTIONS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                   "asyncio.create_subprocess_shell", "pty.spawn", "commands.getoutput",
                   "platform.popen"}
SHELL_ATTRIBUTES = {"create_subprocess_shell", "subprocess_shell", "getoutput",
                    "getstatusoutput", "system", "popen"}
"""Attribute names that start a shell whatever object they hang on (loop.subprocess_shell)."""
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox", "/bin/sh", "/bin/bash", "/usr/bin/sh",
          "/usr/bin/bash", "/bin/dash"}


class ShellFinder(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.names: dict[str, str] = {}  # local name -> dotted origin, from the imports
        self.found: list[str] = []

    def _hit(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.filename}:{getattr(node, 'lineno', 0)}: {what}")

    def _dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name.split(".")[0]] = (
                alias.name if alias.asname else alias.name.split(".")[0])
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            origin = f"{node.module}.{alias.name}"
            self.names[alias.asname or alias.name] = origin
            if origin in SHELL_FUNCTIONS:
                self._hit(node, f"imports {origin}")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted in SHELL_FUNCTIONS:
            self._hit(node, f"uses {dotted}")
        elif node.attr in ("create_subprocess_shell", "subprocess_shell", "getoutput",
                           "getstatusoutput"):
            self._hit(node, f"uses .{node.attr}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if self.names.get(node.id) in SHELL_FUNCTIONS:
            self._hit(node, f"uses {self.names[node.id]} as {node.id}")

    def visit_Call(self, node: ast.Call) -> None:
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value in (False, None)):
                self._hit(node, f"shell={ast.unparse(kw.value)}")
            if kw.arg is None and isinstance(kw.value, ast.Dict):  # **{"shell": True}
                for k in kw.value.keys:
                    if isinstance(k, ast.Constant) and k.value == "shell":
                        self._hit(node, "shell passed in **kwargs")
        func = self._dotted(node.func)
        if func in ("getattr", "builtins.getattr") and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and name.value in SHELL_ATTRIBUTES:
                self._hit(node, f"getattr(..., {name.value!r})")
        if func in ("os.execl", "os.execlp", "os.execv", "os.execvp", "os.spawnl", "os.spawnlp",
                    "subprocess.run", "subprocess.Popen", "subprocess.call",
                    "subprocess.check_call", "subprocess.check_output",
                    "asyncio.create_subprocess_exec") and node.args:
            self._shell_argv(node, node.args)
        self.generic_visit(node)

    def _shell_argv(self, node: ast.AST, args: list[ast.expr]) -> None:
        """An argv that starts a shell with -c is a shell command line in disguise."""
        first = args[0]
        items = first.elts if isinstance(first, ast.List | ast.Tuple) else args
        words = [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if words and words[0] in SHELLS and "-c" in words:
            self._hit(node, f"runs {words[0]} -c")


def shell_uses(source: str, filename: str = "<snippet>") -> list[str]:
    finder = ShellFinder(filename)
    finder.visit(ast.parse(source, filename))
    return finder.found


FORBIDDEN = [
    "import subprocess\nsubprocess.run('ls', shell=True)",
    "import subprocess as sp\nsp.Popen(['ls'], shell=1)",
    "import subprocess\nflag = True\nsubprocess.check_output('x', shell=flag)",
    "import subprocess\nsubprocess.run('ls', **{'shell': True})",
    "import os\nos.system('ls')",
    "import os as o\no.popen('ls')",
    "from os import system\nsystem('ls')",
    "from os import system as run\nrun('ls')",
    "import subprocess\nsubprocess.getoutput('ls')",
    "from subprocess import getstatusoutput\ngetstatusoutput('ls')",
    "import asyncio\nasync def f():\n    await asyncio.create_subprocess_shell('ls')",
    "import asyncio\nasync def f():\n    await asyncio.get_running_loop().subprocess_shell(P, 'ls')",
    "import os\ngetattr(os, 'system')('ls')",
    "import os\nrunner = os.system",
    "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'ls | wc'])",
    "import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('bash', '-c', 'ls')",
]
ALLOWED = [
    "import subprocess\nsubprocess.run(['git', 'status'], shell=False, check=True)",
    "import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('git', 'log')",
    "import os\nos.environ.get('SHELL')",
    "import subprocess\nsubprocess.run(argv)",
]


@pytest.mark.parametrize("snippet", FORBIDDEN)
def test_the_shell_finder_catches_every_spelling(snippet: str) -> None:
    assert shell_uses(snippet), snippet


@pytest.mark.parametrize("snippet", ALLOWED)
def test_the_shell_finder_lets_argv_lists_through(snippet: str) -> None:
    assert shell_uses(snippet) == []


def test_no_shell_anywhere_in_daemon_probes_policies() -> None:
    files = sorted(p for top in SOURCES for p in (ROOT / top).rglob("*.py"))
    assert len(files) > 50  # the whole tree, sample app included
    found = [hit for p in files for hit in shell_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


# -- secrets and file modes: one end-to-end run with every kind of secret -----------------------

DSN_PASSWORD = "pg-Secr3t-rel-7f1e"
DSN = f"postgresql://grading:{DSN_PASSWORD}@127.0.0.1:1/grading?connect_timeout=1"


@pytest.fixture
def starttls_server(cert: CertFiles) -> Iterator[MailServer]:
    server = MailServer("starttls", cert).start()
    yield server
    server.stop()


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def config(ws: Workspace, tmp_path: Path, server: MailServer, cert: CertFiles, metrics: int,
           canary: str) -> str:
    state = tmp_path / "fresh" / "state"  # does not exist: the daemon creates it
    text = ws.config_toml(server.port, state_dir=state, extra="test_hooks = true")
    smtp = (f'starttls = true\nusername = "{SMTP_USER}"\n'
            f'password_file = "{secret_file(tmp_path / "smtp-pw", SMTP_PASSWORD)}"\n'
            f'ca_file = "{cert.cert}"\n')
    text = text.replace('from = "rollbackd@localhost"\n', 'from = "rollbackd@localhost"\n' + smtp)
    text = text.replace('metrics_address = ""', f'metrics_address = "127.0.0.1:{metrics}"')
    return text + f"""
[targets.grading.probes.login]
kind = "login"
url = "{ws.url}/api/auth/login"
email = "{DEMO_USER[0]}"
password_file = "{secret_file(tmp_path / "login-pw", DEMO_USER[1])}"
interval = "500ms"
timeout = "2s"
failure_threshold = 3

[targets.grading.probes.key]
kind = "fernet_key"
key_file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary = "{canary}"
interval = "500ms"
failure_threshold = 2

[targets.grading.key]
file = "{ws.env_file}"
env_var = "DB_ENCRYPTION_KEY"
canary = "{canary}"
restart = {toml_argv(counted(ws.restart_argv(), tmp_path / "restarts"))}
command_timeout = "30s"

[targets.grading.backups]
interval = "1h"
keep = "7d"

[targets.grading.accounts]
path = "{db_path(ws)}"

[targets.pg.probes.db]
kind = "postgres_integrity"
dsn_file = "{secret_file(tmp_path / "pg-dsn", DSN)}"
interval = "1s"
timeout = "2s"
failure_threshold = 2

[contacts.dba]
emails = ["dba@example.com"]

[contacts.emergency]
emails = ["cto@example.com"]
"""


def cli(*argv: str) -> str:
    res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    return res.stdout + res.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.e2e
def test_no_secret_in_any_output_and_private_file_modes(
        workspace: Workspace, tmp_path: Path, starttls_server: MailServer,
        cert: CertFiles) -> None:
    ws = workspace
    good = ws.env()["DB_ENCRYPTION_KEY"]
    bad = Fernet.generate_key().decode()
    canary = Fernet(good.encode()).encrypt(b"grading canary").decode()
    metrics = free_port()
    ws.start()
    path = tmp_path / "rollbackd.toml"
    path.write_text(config(ws, tmp_path, starttls_server, cert, metrics, canary))
    from rollbackd.daemon.config import load_config

    cfg = load_config(path)
    d = DaemonProcess(path, cfg.daemon.socket, cfg.daemon.state_dir, tmp_path / "daemon.log",
                      {"ROLLBACKD_CRASH_AT_STEP": "restart_app"})
    with umask(0o022):  # what a shell gives; the systemd unit's UMask=0077 would hide mistakes
        d.start()
    try:
        wait_for(lambda: known_good(d, ws.head()), 30, f"known-good\n{d.log_text()[-3000:]}")
        wait_for(lambda: journal_rows(d, "SELECT 1 FROM backups WHERE kind = 'key'"
                                         " AND verified_at IS NOT NULL"), 20, "a key backup")
        # The one-time password is in this reply only.
        emergency = d.result("emergency-admin", target="grading")["password"]
        # Secret-looking arguments are redacted in the audit log, whatever the command does.
        d.ctl("status", password=SMTP_PASSWORD, dsn=DSN, token=good)
        # The pg target's database is unreachable: dependency_down, escalated by mail.
        wait_for(lambda: any(i["target"] == "pg" for i in d.result("incidents")), 20,
                 "the pg incident")
        # A deploy with the wrong key: key_invalid, restored from the backup; the daemon is
        # killed at restart_app, restarted, and a person approves the held incident.
        ws.env_file.write_text(ws.env_file.read_text().replace(good, bad))
        ws.restart()
        assert wait_exit(d, 60, "the kill at restart_app") == -9
        d.env.pop("ROLLBACKD_CRASH_AT_STEP")
        with umask(0o022):
            d.start()
        held = wait_for(lambda: incident_in(d, "held"), 20, "held")
        assert d.result("approve", id=held["id"])
        wait_for(lambda: incident_in(d, "resolved"), 60, f"resolved\n{d.log_text()[-3000:]}")
        assert ws.env()["DB_ENCRYPTION_KEY"] == good and runs(tmp_path / "restarts") == 1
        wait_healthy(ws)
        wait_for(lambda: not unsent(d) and len(starttls_server.deliveries) >= 4, 30, "mails")
        assert all(x.user == SMTP_USER for x in starttls_server.deliveries)  # AUTH over STARTTLS

        produced: dict[str, str] = {}
        for i, x in enumerate(starttls_server.deliveries):
            produced[f"mail {i} {x.msg['Subject']}"] = x.raw.decode(errors="replace")
        produced["metrics"] = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        sock = ["-m", "rollbackd.daemon.control.ctl", "--socket", str(d.socket)]
        for args in (["status"], ["incidents"], ["show", str(held["id"])],
                     ["show", str(held["id"]), "--report"], ["audit", "--limit", "100"],
                     ["audit", "--verify"], ["breaker"], ["backups", "grading"]):
            produced[f"rollbackctl {' '.join(args)}"] = cli(*sock, *args)
            produced[f"rollbackctl --json {' '.join(args)}"] = cli(*sock, "--json", *args)
        produced["check-config"] = cli("-m", "rollbackd.daemon.cli", "check-config", str(path))
        produced["probe"] = cli("-m", "rollbackd.daemon.cli", "probe", "--config", str(path))
        assert integrity_ok(d)
        assert d.stop() == 0
        produced["log"] = d.log_text()
        for report in sorted((d.state_dir / "reports").iterdir()):
            produced[f"report {report.name}"] = report.read_text()
        with closing(d.db()) as db:
            produced["journal"] = "\n".join(db.iterdump())
    finally:
        d.stop()

    # The run produced all of these, so finding nothing in them means something.
    assert "key_invalid" in produced["rollbackctl incidents"]
    assert "dependency_down" in produced["rollbackctl incidents"]
    assert "HELD" in " ".join(produced)
    assert "<redacted>" in produced["rollbackctl --json audit --limit 100"]
    assert "cannot connect" in produced["probe"] or "127.0.0.1:1" in produced["probe"]
    secrets = {"smtp password": SMTP_PASSWORD, "login password": DEMO_USER[1],
               "dsn": DSN, "dsn password": DSN_PASSWORD, "good fernet key": good,
               "bad fernet key": bad, "emergency password": emergency}
    leaks = [(where, what) for where, content in produced.items()
             for what, secret in secrets.items() if secret in content]
    assert leaks == []

    # Modes: the state directory the daemon created, its journal, reports, backups, key copies.
    state = d.state_dir
    assert mode(state) == 0o700
    for name in ("journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm"):
        if (state / name).exists():
            assert mode(state / name) == 0o600, name
    reports = sorted((state / "reports").iterdir())
    assert mode(state / "reports") == 0o700 and reports
    assert {p.name: mode(p) for p in reports} == {p.name: 0o600 for p in reports}
    backups = list((state / "backups").rglob("*"))
    key_copies = [Path(r["path"]) for r in journal_rows(d, "SELECT path FROM backups"
                                                           " WHERE kind = 'key'")]
    assert len(key_copies) >= 2 and all(p.exists() for p in key_copies)
    wrong = {str(p): oct(mode(p)) for p in [*backups, *key_copies]
             if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert wrong == {}
