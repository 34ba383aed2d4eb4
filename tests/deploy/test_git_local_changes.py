"""Local hotfixes in a real git work tree are never silently carried into the checkout or lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rollbackd.daemon.config import GitDeployment
from rollbackd.daemon.rollback.base import StepContext, StepFailed, StepHeld
from rollbackd.daemon.rollback.git_service import GitServiceExecutor
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.plans import Component, Plan, PlanKind

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false",
       "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """v1 (good) and v2 (bad): v2 changes app.py only; settings.py is the same in both."""
    repo = tmp_path / "app"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("__pycache__/\n")
    (repo / "app.py").write_text("VERSION = 1\n")
    (repo / "settings.py").write_text("DEBUG = False\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    good = git(repo, "rev-parse", "HEAD")
    (repo / "app.py").write_text("VERSION = 2\n")
    git(repo, "commit", "-qam", "v2")
    return repo, good, git(repo, "rev-parse", "HEAD")


def executor(repo: Path, **kw: str) -> GitServiceExecutor:
    return GitServiceExecutor(GitDeployment(repo=repo, restart=["true"], **kw))  # type: ignore[arg-type]


def ctx(good: str, bad: str) -> StepContext:
    plan = Plan(PlanKind.DEPLOYMENT_ROLLBACK, IncidentClass.APP_DOWN, (),
                {Component.DEPLOYMENT: good}, {Component.DEPLOYMENT: bad})
    return StepContext(7, "grading", plan)


# touched: the rollback changes the edited file (git would refuse); untouched: it does not (the
# edit would be carried silently into the "known-good" checkout). An untracked file either way.
EDITS = [pytest.param("app.py", id="touched-file"), pytest.param("settings.py", id="untouched-file")]


@pytest.mark.parametrize("edited", EDITS)
async def test_local_changes_hold_the_step_by_default(repo: tuple[Path, str, str],
                                                       edited: str) -> None:
    path, good, bad = repo
    (path / edited).write_text("HOTFIX = True\n")
    (path / "hotfix.txt").write_text("applied by hand at 3 a.m.\n")
    (path / "__pycache__").mkdir()
    (path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")  # ignored: not an edit
    with pytest.raises(StepHeld) as held:
        await executor(path).run_step("git_checkout", ctx(good, bad))
    said = str(held.value)
    assert said.startswith(f"local changes in {path}:  M {edited}, ?? hotfix.txt; checking out "
                           f"{good[:12]} would carry them")
    assert "rollbackctl approve 7" in said and "pycache" not in said
    # Nothing changed: HEAD, the branch and both local changes are as they were.
    assert git(path, "rev-parse", "HEAD") == bad
    assert git(path, "symbolic-ref", "--short", "HEAD") == "main"
    assert (path / edited).read_text() == "HOTFIX = True\n"
    assert (path / "hotfix.txt").exists()
    assert git(path, "stash", "list") == ""


@pytest.mark.parametrize("edited", EDITS)
async def test_stash_keeps_local_changes_in_a_named_stash(repo: tuple[Path, str, str],
                                                          edited: str) -> None:
    path, good, bad = repo
    (path / edited).write_text("HOTFIX = True\n")
    (path / "hotfix.txt").write_text("applied by hand\n")
    detail = await executor(path, local_changes="stash").run_step("git_checkout", ctx(good, bad))
    name = f"rollbackd incident 7: local changes before checking out {good[:12]}"
    assert detail == (f"checked out {good[:12]} (detached); local changes ( M {edited}, ?? "
                      f"hotfix.txt) stashed as \"{name}\" (git stash list in {path})")
    # The known-good checkout is exactly v1; the hotfix waits in the stash, untracked file too.
    assert git(path, "rev-parse", "HEAD") == good
    assert git(path, "status", "--porcelain") == ""
    assert (path / "app.py").read_text() == "VERSION = 1\n"
    assert not (path / "hotfix.txt").exists()
    assert git(path, "stash", "list") == f"stash@{{0}}: On main: {name}"
    assert git(path, "show", "stash@{0}^3:hotfix.txt") == "applied by hand"
    assert git(path, "show", f"stash@{{0}}:{edited}") == "HOTFIX = True"


async def test_clean_tree_checks_out_as_before(repo: tuple[Path, str, str]) -> None:
    path, good, bad = repo
    e = executor(path)
    assert await e.local_changes() == []
    assert await e.run_step("git_checkout", ctx(good, bad)) == f"checked out {good[:12]} (detached)"
    assert git(path, "stash", "list") == ""


async def test_a_tree_git_cannot_read_is_not_called_clean(tmp_path: Path) -> None:
    e = executor(tmp_path)  # not a git work tree
    assert await e.local_changes() is None
    with pytest.raises(StepFailed, match="cannot tell whether local changes"):
        await e.run_step("git_checkout", ctx("a" * 40, "b" * 40))
