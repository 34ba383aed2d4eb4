"""git + service rollback: check out a known-good commit detached, reinstall if needed, restart."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from rollbackd.daemon.config import GitDeployment
from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    StepContext,
    StepFailed,
    StepHeld,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.daemon.rollback.receipts import command_effect, run_recorded
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec

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
            # Not idempotent: a restart cut off halfway leaves the service in an unknown state,
            # so an interrupted one waits for a person instead of running again.
            StepSpec("restart_service", idempotent=False, timeout=t, component=self.component),
        )

    def capabilities(self) -> Capabilities:
        return {Capability.DEPLOYMENT_ROLLBACK: self.steps}

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
        return await self._git("rev-parse", "--verify", "HEAD", check=False) or None

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
        return f"commit {version[:12]} exists"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        if name == "git_checkout":
            kept = await self._keep_local_changes(ctx)
            return await self._checkout(ctx.plan.target_version) + kept
        if name == "install_dependencies":
            return await self._install(ctx, ctx.plan.current_version, ctx.plan.target_version)
        if name == "restart_service":
            res = await run_recorded(ctx, name, self.settings.restart,
                                     self.settings.command_timeout)
            return f"restarted with {self.settings.restart[0]} (exit {res.returncode})"
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
        return CHECK_ONLY

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
