"""The deployed git version is asked of git (a process each) only when HEAD may have moved: a
stat of HEAD and its ref says when (GitServiceExecutor.version_stamp); local edits are looked
for every DIRTY_EVERY while the tree is clean, on every read while it is dirty, and once more
right before a release earns known-good."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollbackd.daemon import release_ledger
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.release_ledger import ReleaseLedger
from rollbackd.daemon.rollback.git_service import GitServiceExecutor
from tests.deploy.test_git_local_changes import executor, git, repo  # noqa: F401 - fixture

_ = repo


class Counted(GitServiceExecutor):
    """The real executor, counting the git processes the ledger makes it run."""

    asked = 0
    looked = 0

    async def current_version(self) -> str | None:
        self.asked += 1
        return await super().current_version()

    async def local_changes(self) -> list[str] | None:
        self.looked += 1
        return await super().local_changes()


def counted(path: Path) -> Counted:
    ex = executor(path)
    return Counted(ex.settings)


def ledger(ex: Counted, tmp_path: Path, stable_after: float = 3600.0) -> ReleaseLedger:
    return ReleaseLedger("web", Journal(tmp_path / "journal.sqlite3"), None,  # type: ignore[arg-type]
                         lambda: ex, None, lambda: stable_after, lambda: False, lambda: False,
                         lambda: (None, None))


def test_the_stamp_moves_with_head_and_only_with_head(repo: tuple[Path, str, str]) -> None:  # noqa: F811
    path, good, bad = repo
    ex = executor(path)
    before = ex.version_stamp()
    assert before is not None and ex.version_stamp() == before
    (path / "app.py").write_text("VERSION = 'edited'\n")  # an edit is not a move
    (path / "new.txt").write_text("untracked\n")
    assert ex.version_stamp() == before
    git(path, "checkout", "-q", "--", "app.py")
    seen = [before]
    for move in (["commit", "-q", "--allow-empty", "-m", "v3"],  # the branch's ref is replaced
                 ["checkout", "-q", good],                       # detached: HEAD's text changes
                 ["checkout", "-q", "main"],
                 ["reset", "-q", "--hard", bad],
                 ["pack-refs", "--all"]):                         # the ref moves to packed-refs
        git(path, *move)
        stamp = ex.version_stamp()
        assert stamp not in seen, move
        seen.append(stamp)


def test_a_linked_worktree_has_no_stamp(repo: tuple[Path, str, str], tmp_path: Path) -> None:  # noqa: F811
    path, good, _bad = repo
    git(path, "worktree", "add", "-q", str(tmp_path / "linked"), good)
    assert executor(tmp_path / "linked").version_stamp() is None  # .git is a file there


async def test_the_ledger_asks_git_only_when_the_stamp_moves(
        repo: tuple[Path, str, str], tmp_path: Path) -> None:  # noqa: F811
    path, _good, bad = repo
    ex = counted(path)
    led = ledger(ex, tmp_path)
    fresh = 1e-9  # older than any read: the cache alone never answers
    assert await led.current_version(fresh) == bad
    assert (ex.asked, ex.looked) == (1, 1)
    for _ in range(5):
        assert await led.current_version(fresh) == bad
    assert (ex.asked, ex.looked) == (1, 1)  # the stamp stood: no git process

    git(path, "commit", "-q", "--allow-empty", "-m", "v3")
    v3 = git(path, "rev-parse", "HEAD")
    assert await led.current_version(fresh) == v3
    assert (ex.asked, ex.looked) == (2, 2)  # moved: asked, and looked for edits

    assert await led.current_version(0.0) == v3  # "now": asked whatever the stamp
    assert (ex.asked, ex.looked) == (3, 3)


async def test_a_stamp_that_stands_is_trusted_only_for_recheck(
        repo: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    path, _good, bad = repo
    ex = counted(path)
    led = ledger(ex, tmp_path)
    monkeypatch.setattr(release_ledger, "RECHECK", 0.0)
    await led.current_version(1e-9)
    await led.current_version(1e-9)
    assert ex.asked == 2


async def test_an_edit_made_between_looks_keeps_the_release_from_known_good(
        repo: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    path, _good, bad = repo
    ex = counted(path)
    led = ledger(ex, tmp_path, stable_after=0.0)  # the first clean evaluation earns it
    monkeypatch.setattr(release_ledger, "DIRTY_EVERY", 3600.0)
    await led.current_version(1e-9)  # clean at this look
    (path / "settings.py").write_text("DEBUG = True\n")  # a hotfix after the look
    assert await led.update(True, 1e-9) == bad
    entries = {e.version: e for e in led.journal.ledger.entries("web")}
    assert entries[bad].known_good_at is None
    assert ex.looked == 2  # the look right before granting found the edit

    git(path, "checkout", "-q", "--", "settings.py")  # undone: dirty trees are looked at each read
    await led.update(True, 1e-9)
    entries = {e.version: e for e in led.journal.ledger.entries("web")}
    assert entries[bad].known_good_at is not None




async def test_a_version_git_could_not_tell_is_asked_again_at_the_next_read(
        repo: tuple[Path, str, str], tmp_path: Path) -> None:  # noqa: F811
    """A failed `git rev-parse` (git busy, a lock) must not be kept behind a stamp that stands:
    the demo on a loaded machine waited 40 s for a version the ledger never asked again."""
    path, _good, bad = repo
    ex = counted(path)
    real = ex.current_version
    answers: list[str | None] = [None]

    async def once_unknown() -> str | None:
        return answers.pop() if answers else await real()

    ex.current_version = once_unknown  # type: ignore[method-assign]
    led = ledger(ex, tmp_path)
    assert await led.current_version(1e-9) is None
    assert await led.current_version(1e-9) == bad


async def test_a_read_while_another_looks_for_edits_never_writes_back_a_stale_version(
        repo: tuple[Path, str, str], tmp_path: Path) -> None:  # noqa: F811
    """The evaluation and the demo read at once; the first is still in `git status` when the
    second comes. Neither may leave the version unknown behind a stamp that stands."""
    import asyncio

    path, _good, bad = repo
    gate = asyncio.Event()

    class Slow(Counted):
        async def local_changes(self) -> list[str] | None:
            self.looked += 1
            await gate.wait()
            return await GitServiceExecutor.local_changes(self)

    ex = Slow(executor(path).settings)
    led = ledger(ex, tmp_path)
    first = asyncio.create_task(led.current_version(1e-9))
    while ex.looked == 0:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(led.current_version(1e-9))
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == bad and await second == bad
    assert led.version == bad
    assert await led.current_version(1e-9) == bad
    assert ex.asked == 1
