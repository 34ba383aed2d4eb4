"""Command receipts: a step that runs a command (restart, start, install) records on disk that
the command started and how it ended, so a daemon restarted after a crash can tell.

A restart or an install leaves no trace in the world that says "this happened after the step
began". The receipt is that trace, kept apart from the journal: it is written by the step
itself, before and after its command, and fsync'd. Started with no end recorded means the
crash came while the command ran: unknown, a person looks.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollbackd.daemon.rollback.base import Effect, StepContext, StepFailed, absent, done, unknown
from rollbackd.daemon.rollback.commands import CommandResult, run_argv


def _path(ctx: StepContext, step: str) -> Path | None:
    if ctx.receipts is None:
        return None
    return ctx.receipts / f"{ctx.incident_id}-{step}.json"


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def run_recorded(ctx: StepContext, step: str, argv: list[str] | tuple[str, ...],
                       timeout: float, **kwargs: Any) -> CommandResult:
    """run_argv, with a receipt before the command starts and after it ends."""
    path = _path(ctx, step)
    if path is None:
        return await run_argv(argv, timeout, **kwargs)
    record: dict[str, Any] = {"command": Path(argv[0]).name, "started_at": _now()}
    _write(path, record)
    try:
        res = await run_argv(argv, timeout, **kwargs)
    except StepFailed as exc:
        _write(path, {**record, "ended_at": _now(), "exit": None, "failed": str(exc)[:300]})
        raise
    _write(path, {**record, "ended_at": _now(), "exit": res.returncode})
    return res


def command_effect(ctx: StepContext, step: str, since: datetime) -> Effect:
    """What the receipt of `step`'s command says of the run journaled at `since`."""
    path = _path(ctx, step)
    if path is None:
        return unknown("its command leaves no trace and no receipts are kept")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return replace(absent(f"its command never started here (no receipt {path.name})"),
                       local=True)
    except (OSError, ValueError) as exc:
        return unknown(f"its receipt {path.name} cannot be read: {exc}")
    started = datetime.fromisoformat(record["started_at"])
    if started < since:
        return replace(absent(f"its command never started here in this run (the receipt is "
                              f"of {started:%H:%M:%S})"), local=True)
    command = record.get("command", "the command")
    if "ended_at" not in record:
        return unknown(f"{command} started at {started:%H:%M:%S} UTC and its end was not "
                       "recorded: it may have run in full, in part or not at all")
    if record.get("exit") != 0:
        return unknown(f"{command} started at {started:%H:%M:%S} UTC and failed: "
                       f"{record.get('failed', 'exit ' + str(record.get('exit')))}")
    ended = datetime.fromisoformat(record["ended_at"])
    return done(f"{command} ran and exited 0 at {ended:%H:%M:%S} UTC")
