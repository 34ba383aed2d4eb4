"""Running configured argv lists: no shell, bounded by a timeout, output kept for evidence."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from rollbackd.daemon.rollback.base import StepFailed

_ERROR_LINE = re.compile(r"\b(error|fatal|panic)\b", re.IGNORECASE)
"""A line that reports a failure: "pg_restore: error: ...", "ERROR:  ...", "FATAL: ..."."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    output: str

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def failure(self, lines: int = 3) -> str:
        """The last `lines` of the output, after its first error line when that came earlier.

        Many tools print the cause first and its consequences after it: pg_restore -j reports
        the failed COPY and why ("No space left on device"), then its hint and context, then "a
        worker process died unexpectedly"; the last lines alone would lose the cause.
        """
        out = self.output.splitlines()
        first = next((ln for ln in out[:-lines] if _ERROR_LINE.search(ln)), None)
        cause = [first, "..."] if first is not None else []
        return "\n".join(cause + out[-lines:])


async def run_argv(
    argv: list[str] | tuple[str, ...],
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> CommandResult:
    """Run argv; on timeout the whole process group is killed so nothing lingers."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env={**os.environ, **env} if env else None,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        raise StepFailed(f"cannot run {argv[0]!r}: {exc.strerror}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill_group(proc)
        raise StepFailed(f"{argv[0]} timed out after {timeout:g}s") from None
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    result = CommandResult(tuple(argv), proc.returncode or 0, out.decode(errors="replace"))
    if check and result.returncode != 0:
        raise StepFailed(f"{' '.join(argv[:3])} exited {result.returncode}: "
                         f"{result.failure(3)}")
    return result


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await proc.wait()
