"""git + service rollback: check out a known-good commit detached, reinstall if needed, restart."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, ClassVar

from rollbackd.daemon.config import GitDeployment
from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    Process,
    StepContext,
    StepFailed,
    StepHeld,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.candidate import Candidates
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.daemon.rollback.latency_trial import trial
from rollbackd.daemon.rollback.pidfile import pidfile_process
from rollbackd.daemon.rollback.receipts import command_effect, run_recorded
from rollbackd.daemon.rollback.release_config import STEP as CONFIG_STEP
from rollbackd.daemon.rollback.release_config import ReleaseConfig
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

log = logging.getLogger("rollbackd.deploy")

CANDIDATE_STEPS = ("start_candidate", "probe_candidate", "stop_candidate")

# `git stash` writes a commit: an identity of its own, whatever the service user's git config.
_IDENTITY = ("-c", "user.name=rollbackd", "-c", "user.email=rollbackd@localhost",
             "-c", "commit.gpgsign=false")


class GitServiceExecutor:
    component: ClassVar[Component] = Component.DEPLOYMENT
    backend: ClassVar[str] = "git"

    def __init__(self, settings: GitDeployment) -> None:
        self.settings = settings
        t = settings.command_timeout
        self.steps: tuple[StepSpec, ...] = (
            StepSpec("git_checkout", idempotent=True, timeout=60, component=self.component),
            StepSpec("install_dependencies", idempotent=True, timeout=t,
                     component=self.component),
            # The release's recorded config files (rollbackd/daemon/rollback/release_config.py), put back
            # before the restart reads them; each file is replaced atomically, so it may rerun.
            *((StepSpec(CONFIG_STEP, idempotent=True, timeout=60, component=self.component),)
              if settings.recorded_files else ()),
            # Not idempotent: a restart cut off halfway leaves the service in an unknown state,
            # so an interrupted one waits for a person instead of running again.
            StepSpec("restart_service", idempotent=False, timeout=t, component=self.component),
        )
        tf, c = settings.test_first, self.component
        self.candidates = Candidates(settings.repo, tf) if tf is not None else None
        self.test_first_steps: tuple[StepSpec, ...] = () if tf is None else (
            # The known-good commit beside the live one, probed, stopped; then the swap.
            StepSpec("start_candidate", idempotent=True, timeout=tf.start_within + 70,
                     component=c),
            StepSpec("probe_candidate", idempotent=True,
                     timeout=tf.start_within + tf.probe_within + 80, component=c),
            StepSpec("stop_candidate", idempotent=True, timeout=tf.stop_timeout + 70,
                     component=c),
            *self.steps,
        )

        self.release_config: ReleaseConfig | None = None
        """Attached by the monitor (it holds the journal) when the deployment lists files."""

    def _config(self) -> ReleaseConfig:
        if self.release_config is None:
            raise StepFailed("the release's recorded config is not attached to the git executor")
        return self.release_config

    def capabilities(self) -> Capabilities:
        caps = {Capability.DEPLOYMENT_ROLLBACK: self.steps}
        if self.test_first_steps:
            caps[Capability.DEPLOYMENT_TEST_FIRST] = self.test_first_steps
        return caps

    async def _git(self, *args: str, check: bool = True) -> str:
        res = await run_argv(["git", "-C", str(self.settings.repo), *args], timeout=30, check=check)
        return res.output.strip() if res.returncode == 0 else ""

    async def local_changes(self) -> list[str] | None:
        # Porcelain: stable across git versions and locales; .gitignore'd files are not edits.
        res = await run_argv(["git", "-C", str(self.settings.repo), "status", "--porcelain=v1",
                              "--untracked-files=all"], timeout=30, check=False)
        if res.returncode != 0:
            return None
        return [line for line in res.output.splitlines() if line.strip()]

    async def current_version(self) -> str | None:
        res = await run_argv(["git", "-C", str(self.settings.repo), "rev-parse", "--verify",
                              "HEAD"], timeout=30, check=False)
        if res.returncode != 0:  # said, not hidden: no version means no known-good clock
            log.warning("repo=%s status=version-unknown reason=%r", self.settings.repo,
                        res.failure(2))
            return None
        return res.output.strip() or None

    def version_stamp(self) -> tuple[object, ...] | None:
        """HEAD's text and a stat of every file that can move it: HEAD, the ref HEAD names and
        packed-refs. git replaces a ref by renaming a new file over it, so a commit, checkout,
        reset or fetch that moves HEAD changes the stamp. Two system calls and a read, where
        `git rev-parse` is a process (the ledger asked every 2 s per target). None for a work
        tree whose .git is a file (a linked worktree or submodule: refs live elsewhere)."""
        git = self.settings.repo / ".git"
        try:
            head = (git / "HEAD").read_text()
        except OSError:
            return None
        files = [git / "HEAD", git / "packed-refs"]
        if head.startswith("ref: "):
            files.append(git / head[5:].strip())
        stamp: list[object] = [head]
        for path in files:
            try:
                st = path.stat()
            except FileNotFoundError:
                stamp.append(None)
            except OSError:
                return None
            else:
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    async def process(self) -> Process:
        if self.settings.pidfile is None:
            return Process(None, None, "no pidfile configured")
        return pidfile_process(self.settings.pidfile)

    async def version_exists(self, version: str) -> bool:
        res = await run_argv(
            ["git", "-C", str(self.settings.repo), "cat-file", "-e", f"{version}^{{commit}}"],
            timeout=30, check=False,
        )
        return res.returncode == 0

    async def evidence(self) -> dict[str, Any]:
        return {
            "commit": await self.current_version(),
            "branch": await self._git("symbolic-ref", "-q", "--short", "HEAD", check=False)
            or "(detached)",
            "last_commit": await self._git("log", "-1", "--format=%h %s (%an, %cr)", check=False),
            "repo": str(self.settings.repo),
        }

    async def backup_current(self, ctx: StepContext) -> str:
        # A deployment's current state is its commit, which git keeps: nothing to copy.
        return f"current commit {ctx.plan.current_version or '?'} stays in the repository"

    async def verify_target(self, ctx: StepContext) -> str:
        version = ctx.target_of(Component.DEPLOYMENT)
        if not await self.version_exists(version):
            raise StepFailed(f"rollback target {version[:12]} is not in the repository")
        config = f"; {await self._config().check(ctx)}" if CONFIG_STEP in ctx.plan.step_names \
            else ""
        return f"commit {version[:12]} exists{config}"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        if name == "git_checkout":
            kept = await self._keep_local_changes(ctx)
            return await self._checkout(ctx.plan.target_version) + kept
        if name == "install_dependencies":
            return await self._install(ctx, ctx.plan.current_version, ctx.plan.target_version)
        if name == CONFIG_STEP:
            return await self._config().restore(ctx)
        if name == "restart_service":
            res = await run_recorded(ctx, name, self.settings.restart,
                                     self.settings.command_timeout)
            return f"restarted with {self.settings.restart[0]} (exit {res.returncode})"
        if name in CANDIDATE_STEPS and self.candidates is not None:
            step = {"start_candidate": self._start_candidate,
                    "probe_candidate": self._probe_candidate,
                    "stop_candidate": self._stop_candidate}[name]
            return await step(ctx)
        raise StepFailed(f"git executor has no step {name!r}")

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "git_checkout":
            head, target = await self.current_version(), ctx.plan.target_version
            if head == target:
                return done(f"the work tree is at the target commit {target[:12]}")
            if head == ctx.plan.current_version:
                return absent(f"the work tree is still at {(head or '?')[:12]}, the failed commit")
            return unknown(f"the work tree is at {(head or 'no commit')[:12]}, neither the "
                           f"failed commit nor the target {target[:12]}")
        if name == "install_dependencies":
            if not await self._requirements_changed(ctx.plan.current_version,
                                                    ctx.plan.target_version):
                return done("requirements are the same in both commits: nothing to install")
            if self.settings.install is None:
                return done("no install command is configured: nothing to run")
            return command_effect(ctx, name, since)
        if name == "restart_service":
            return command_effect(ctx, name, since)
        if name in CANDIDATE_STEPS and self.candidates is not None:
            return await self._candidate_effect(name, ctx)
        if name == CONFIG_STEP:
            return await self._config().effect(ctx)
        return CHECK_ONLY

    # -- test first: the known-good commit beside the live one -------------------------------

    async def _candidate_effect(self, name: str, ctx: StepContext) -> Effect:
        # A candidate a crash left behind is stopped here, by its recorded PID, whatever is
        # decided next: a held incident must not leave a second copy of the app running.
        assert self.candidates is not None
        found = await self.candidates.stop(ctx.receipts, ctx.incident_id)
        left = await self.candidates.worktrees()
        if left:
            return unknown(f"{found}; git still lists work trees {', '.join(left)}")
        if name == "stop_candidate":
            return done(f"no candidate process or work tree is left ({found})")
        live = (ctx.plan.current_version or "?")[:12]
        return absent(f"{found}; nothing was swapped, {live} stayed live: the candidate starts "
                      "afresh when the plan resumes")

    async def _start_candidate(self, ctx: StepContext) -> str:
        assert self.candidates is not None
        target = ctx.target_of(Component.DEPLOYMENT)
        leftover = await self.candidates.stop(ctx.receipts, ctx.incident_id)
        began = time.monotonic()
        try:
            rec = await self.candidates.start(ctx.receipts, ctx.incident_id, target)
        except BaseException:  # a failed or cut-off start leaves nothing behind
            await self.candidates.stop(ctx.receipts, ctx.incident_id)
            raise
        deps = ""
        if await self._requirements_changed(ctx.plan.current_version, target):
            deps = "; its requirements differ and it runs on the live version's dependencies"
        s = self.settings.test_first
        assert s is not None
        note = "" if leftover == "no candidate was left" else f" ({leftover} first)"
        return (f"started {target[:12]} from the work tree {rec.worktree} (pid {rec.pid}) on "
                f"port {s.spare_port}, listening after {time.monotonic() - began:.2f}s"
                f"{deps}{note}")

    async def _probe_candidate(self, ctx: StepContext) -> str:
        assert self.candidates is not None and self.settings.test_first is not None
        live = (ctx.plan.current_version or "?")[:12]
        restarted = ""
        try:
            rec = self.candidates.read(ctx.receipts, ctx.incident_id)
            if rec is None or not rec.alive():  # stopped by recovery after a crash
                restarted = await self._start_candidate(ctx) + "; "
            began = time.monotonic()
            verdict, last = await trial(self.settings.test_first)
            took = time.monotonic() - began
        except BaseException:
            await self.candidates.stop(ctx.receipts, ctx.incident_id)
            raise
        if verdict is None or not verdict.faster:
            why = verdict.why if verdict else (
                f"it gave no {self.settings.test_first.samples} good answers in a row within "
                f"{self.settings.test_first.probe_within:g}s (last: {last})")
            stopped = await self.candidates.stop(ctx.receipts, ctx.incident_id)
            raise StepFailed(f"test first: {why}; escalating instead of swapping: nothing was "
                             f"swapped, {live} stays live; {stopped}")
        return f"{restarted}{verdict.why}, probed in {took:.2f}s"

    async def _stop_candidate(self, ctx: StepContext) -> str:
        assert self.candidates is not None
        began = time.monotonic()
        what = await self.candidates.stop(ctx.receipts, ctx.incident_id)
        return f"{what} in {time.monotonic() - began:.2f}s"

    async def _keep_local_changes(self, ctx: StepContext) -> str:
        """Local hotfixes are never carried into the known-good checkout, nor lost: held for a
        person by default, or kept in a named stash where the config says so."""
        changes = await self.local_changes()
        if changes is None:
            raise StepFailed(f"`git status` failed in {self.settings.repo}: cannot tell whether "
                             "local changes would be carried into the checkout")
        if not changes:
            return ""
        repo, files = self.settings.repo, ", ".join(changes)
        if self.settings.local_changes == "hold":
            raise StepHeld(
                f"local changes in {repo}: {files}; checking out {ctx.plan.target_version[:12]} "
                "would carry them into the known-good release (or git would refuse): nothing "
                "was changed. Commit, stash or remove them, then `rollbackctl approve "
                f"{ctx.incident_id}`, or set deployment.local_changes = \"stash\"")
        name = (f"rollbackd incident {ctx.incident_id}: local changes before checking out "
                f"{ctx.plan.target_version[:12]}")
        await self._git(*_IDENTITY, "stash", "push", "--include-untracked", "--message", name)
        left = await self.local_changes()
        if left != []:
            raise StepFailed(f"`git stash` left local changes in {repo}: "
                             f"{', '.join(left or ['git status failed'])}")
        return f"; local changes ({files}) stashed as \"{name}\" (git stash list in {repo})"

    async def _checkout(self, target: str) -> str:
        # Detached: the branch keeps pointing at the bad commit; moving it is a person's call.
        await self._git("checkout", "--detach", "--quiet", target)
        head = await self.current_version()
        if head != target:
            raise StepFailed(f"HEAD is {head} after checkout, expected {target}")
        return f"checked out {target[:12]} (detached)"

    async def _requirements_changed(self, current: str | None, target: str) -> bool:
        if current is None:
            return True
        res = await run_argv(
            ["git", "-C", str(self.settings.repo), "diff", "--quiet", current, target, "--",
             *self.settings.requirements],
            timeout=30, check=False,
        )
        return res.returncode != 0

    async def _install(self, ctx: StepContext, current: str | None, target: str) -> str:
        if not await self._requirements_changed(current, target):
            return "requirements unchanged: nothing to install"
        if self.settings.install is None:
            return "requirements differ but no install command is configured: skipped"
        await run_recorded(ctx, "install_dependencies", self.settings.install,
                           self.settings.command_timeout, cwd=self.settings.repo)
        return "requirements differ: dependencies reinstalled"
