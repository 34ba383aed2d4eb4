"""What every injector shares: its context, its shape, its error and running an argv.

Below the injectors themselves (argv, git, Docker, data), which import it; injectors.py picks
one of them by the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.commands import run_argv

if TYPE_CHECKING:
    from rollbackd.daemon.config import TargetConfig
    from rollbackd.daemon.drills.settings import InjectorSettings


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
