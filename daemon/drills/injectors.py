"""Injectors: how a drill puts its fault in. A configured argv (no shell), or a built-in one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from daemon.rollback.base import StepFailed
from daemon.rollback.commands import run_argv

if TYPE_CHECKING:
    from daemon.config import TargetConfig
    from daemon.drills.settings import InjectorSettings


class DrillError(Exception):
    """The drill cannot go on: one sentence for the report."""


@dataclass(frozen=True)
class InjectContext:
    target: str
    scenario: str
    drill_id: int
    config: TargetConfig
    settings: InjectorSettings

    @property
    def env(self) -> dict[str, str]:
        return {"ROLLBACKD_DRILL_TARGET": self.target, "ROLLBACKD_DRILL_SCENARIO": self.scenario,
                "ROLLBACKD_DRILL_ID": str(self.drill_id)}


class Injector(Protocol):
    async def inject(self) -> str:
        """Put the fault in; a one-line detail. Raises DrillError when it could not."""
        ...

    async def cleanup(self) -> str:
        """After a drill that passed: tidy what the injection left (a branch, a file)."""
        ...


async def run_injector_argv(argv: list[str], ctx: InjectContext, what: str,
                            cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """argv (no shell) with the drill's variables (and `env`) in its environment."""
    try:
        res = await run_argv(argv, ctx.settings.timeout, cwd=cwd or ctx.settings.cwd,
                             env={**(env or {}), **ctx.env})
    except StepFailed as exc:
        raise DrillError(f"{what} failed: {exc}") from None
    last = res.tail(1).strip()
    return f"{what}: {argv[0]} exit 0" + (f" ({last[:200]})" if last else "")


class ArgvInjector:
    def __init__(self, ctx: InjectContext) -> None:
        self.ctx = ctx

    async def inject(self) -> str:
        assert self.ctx.settings.argv is not None
        return await run_injector_argv(self.ctx.settings.argv, self.ctx, "injector")

    async def cleanup(self) -> str:
        if self.ctx.settings.cleanup is None:
            return "no cleanup configured"
        return await run_injector_argv(self.ctx.settings.cleanup, self.ctx, "cleanup")


def build_injector(ctx: InjectContext) -> Injector:
    """The injector the settings name; DrillError when the target lacks what it works on."""
    builtin = ctx.settings.builtin
    if builtin is None:
        return ArgvInjector(ctx)
    if builtin in ("sampleapp_wont_start", "sampleapp_slow"):
        from daemon.drills.injectors_git import SampleAppCommit

        return SampleAppCommit(ctx)
    if builtin == "docker_image":
        from daemon.drills.injectors_docker import DockerImage

        return DockerImage(ctx)
    from daemon.drills.injectors_data import DATA_INJECTORS

    return DATA_INJECTORS[builtin](ctx)
