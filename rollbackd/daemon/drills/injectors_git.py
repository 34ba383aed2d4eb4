"""Built-in injectors for a git deployment of the bundled sample app: a bad version deployed.

The bad version is committed on a detached HEAD, never on the branch, and the app restarted
through the deployment's own restart argv: what a deploy tool does. After a drill that passed
(the daemon checked the known-good commit out again), the branch is checked out again when it
still points at that very commit, so nothing about the deployment differs from before.
"""

from __future__ import annotations

from pathlib import Path

from rollbackd.daemon.config import GitDeployment
from rollbackd.daemon.drills.injector_base import DrillError, InjectContext
from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.commands import run_argv

# The drill's commits are made under this identity, whatever the host's git config says (a
# daemon's user often has none) and never signed (no agent to ask).
GIT_ID = ["-c", "user.name=rollbackd drill", "-c", "user.email=rollbackd@localhost",
          "-c", "commit.gpgsign=false"]
# A deploy that cannot start: the kind of mistake that takes an app down at 3 a.m.
BROKEN_PATCH = '\nraise SystemExit("ImportError: settings module grading_settings is missing")\n'

HEALTH = "    def health() -> JsonReply:\n"


def _wont_start(source: str, delay: float) -> str:
    head, sep, rest = source.partition("from __future__ import annotations\n")
    if not sep:
        raise DrillError("app.py is not the bundled sample app: nothing to break")
    return head + sep + BROKEN_PATCH + rest


def _slow(source: str, delay: float) -> str:
    if HEALTH not in source:
        raise DrillError("app.py has no health() to slow down: the sampleapp_slow injector "
                         "works on the bundled sample app only")
    return source.replace(HEALTH, f"{HEALTH}        time.sleep({delay:g})  # drill: slow\n", 1)


PATCHES = {
    "sampleapp_wont_start": (_wont_start, "load settings from grading_settings"),
    "sampleapp_slow": (_slow, "render the health page with the new template engine"),
}


class SampleAppCommit:
    def __init__(self, ctx: InjectContext) -> None:
        dep = ctx.config.deployment
        if not isinstance(dep, GitDeployment):
            raise DrillError(f"builtin {ctx.settings.builtin} needs a git deployment "
                             f"([targets.{ctx.target}.deployment] kind = \"git\")")
        self.ctx, self.dep = ctx, dep
        self.branch: str | None = None

    async def _git(self, *args: str, check: bool = True) -> str:
        try:
            res = await run_argv(["git", *GIT_ID, "-C", str(self.dep.repo), *args], 30,
                                 check=check)
        except StepFailed as exc:
            raise DrillError(f"git {args[0]} failed: {exc}") from None
        return res.output.strip() if res.returncode == 0 else ""

    async def inject(self) -> str:
        builtin = self.ctx.settings.builtin
        assert builtin in PATCHES
        patch, message = PATCHES[builtin]
        self.branch = await self._git("symbolic-ref", "-q", "--short", "HEAD", check=False) or None
        app = Path(self.dep.repo) / "app.py"
        try:
            source = app.read_text()
        except OSError as exc:
            raise DrillError(f"cannot read {app}: {exc.strerror}") from None
        await self._git("checkout", "-q", "--detach")
        app.write_text(patch(source, self.ctx.settings.delay))
        await self._git("commit", "-q", "-am", f"drill {self.ctx.drill_id}: {message}")
        commit = await self._git("rev-parse", "HEAD")
        try:
            await run_argv(self.dep.restart, self.ctx.settings.timeout)
        except StepFailed as exc:
            raise DrillError(f"restart onto the drill's version failed: {exc}") from None
        return f"deployed {commit[:12]} ({message}; detached, the branch is untouched) and restarted"

    async def cleanup(self) -> str:
        if self.branch is None:
            return "HEAD was detached before the drill: left detached"
        head = await self._git("rev-parse", "HEAD")
        tip = await self._git("rev-parse", "--verify", "-q", self.branch, check=False)
        if tip != head:
            return f"{self.branch} is at {tip[:12] or '?'}, not at HEAD {head[:12]}: left detached"
        await self._git("checkout", "-q", self.branch)
        return f"{self.branch} checked out again (same commit {head[:12]})"
