"""Who may reach the control socket: its group and mode, allowed groups, and clear refusals."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import SmtpSink
from tests.control.conftest import audit_rows

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")]

NOBODY = 65534
GROUP = "staff"
ROOT = Path(__file__).resolve().parents[2]

# The venv's interpreter is under /root (0700): uid 65534 cannot exec it. So the child starts as
# root, imports rollbackctl, then drops to nobody with the given groups before it connects.
AS_NOBODY = f"""\
import os, sys
from rollbackd.daemon.control import ctl
ctl.build_parser().format_help()  # argparse and gettext import lazily; warm them as root
groups = [int(g) for g in sys.argv[1].split(",") if g]
os.setgroups(groups)
os.setgid({NOBODY})
os.setuid({NOBODY})
sys.argv[0] = "rollbackctl"
sys.exit(ctl.main(sys.argv[2:]))
"""


def ctl_as_nobody(groups: list[int], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", AS_NOBODY, ",".join(map(str, groups)), *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.fixture
def open_state() -> Iterator[Path]:
    """A state directory uid 65534 can reach (pytest's tmp dirs are 0700)."""
    state = Path(tempfile.mkdtemp(prefix="rollbackd-access-"))
    os.chmod(state, 0o755)
    yield state
    shutil.rmtree(state, ignore_errors=True)


def test_group_members_are_let_in_others_told_which_group_to_join(
        workspace: Workspace, smtp: SmtpSink, start_daemon, open_state: Path) -> None:
    staff = grp.getgrnam(GROUP).gr_gid
    d = start_daemon(workspace.config_toml(
        smtp.port, state_dir=open_state,
        extra=f'socket_group = "{GROUP}"\nallowed_groups = ["{GROUP}"]\n'))
    st = os.stat(d.socket)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, staff)

    member = ctl_as_nobody([staff], "--socket", str(d.socket), "status")
    assert member.returncode == 0, member.stderr
    assert "grading" in member.stdout
    assert any(r["uid"] == NOBODY and r["cmd"] == "status" and r["outcome"] == "ok"
               for r in audit_rows(d))

    outsider = ctl_as_nobody([], "--socket", str(d.socket), "status")
    assert outsider.returncode == 3, outsider.stdout
    assert f"permission denied on {d.socket}: join the group '{GROUP}'" in outsider.stderr
    assert "Traceback" not in outsider.stderr


def test_socket_group_alone_does_not_allow_the_peer(
        workspace: Workspace, smtp: SmtpSink, start_daemon, open_state: Path) -> None:
    staff = grp.getgrnam(GROUP).gr_gid
    d = start_daemon(workspace.config_toml(smtp.port, state_dir=open_state,
                                           extra=f'socket_group = "{GROUP}"\n'))
    out = ctl_as_nobody([staff], "--socket", str(d.socket), "status")
    assert out.returncode == 1, out.stdout
    assert "forbidden" in out.stderr and "daemon.allowed_groups" in out.stderr
    # Refused, and audited as such: nothing ran.
    assert [(r["cmd"], r["args"], r["outcome"]) for r in audit_rows(d) if r["uid"] == NOBODY] \
        == [("status", "{}", "error:forbidden")]


def test_the_default_group_is_the_daemons(workspace: Workspace, smtp: SmtpSink,
                                          start_daemon) -> None:
    d = start_daemon(workspace.config_toml(smtp.port))
    st = os.stat(d.socket)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, os.getgid())


@pytest.mark.parametrize("extra, key", [
    ('socket_group = "no-such-group"\n', "daemon.socket_group"),
    ('allowed_groups = ["staff", "no-such-group"]\n', "daemon.allowed_groups"),
])
def test_a_missing_group_is_named_at_start(workspace: Workspace, smtp: SmtpSink,
                                           tmp_path: Path, extra: str, key: str) -> None:
    config = tmp_path / "rollbackd.toml"
    config.write_text(workspace.config_toml(smtp.port, extra=extra))
    for argv in (["check-config", str(config)], ["run", "--config", str(config)]):
        out = subprocess.run([sys.executable, "-m", "rollbackd.daemon.cli", *argv], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2, (argv, out.stdout, out.stderr)
        assert f"{config}: {key}: no group named 'no-such-group' on this host" in out.stderr
