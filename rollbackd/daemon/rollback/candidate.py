"""The git candidate: a second work tree of the target commit and the transient app process run
from it on the spare port, recorded on disk so a restarted daemon finds and stops it by PID.

A transient process (not a templated systemd unit) because the daemon owns its whole life: it
needs no unit file installed beside the app's, no privilege to start units, and works the same
without systemd (containers, tests). Its PID and kernel start time are recorded (fsync'd) the
moment it exists; a stop signals the process group only while /proc still shows that very
process (a reused PID is never signalled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollbackd.daemon.rollback.base import StepFailed
from rollbackd.daemon.rollback.candidate_settings import GitTestFirst
from rollbackd.daemon.rollback.commands import run_argv

# Passed from the daemon's own environment; the app's settings come from env_file and env.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (# comments, optional quotes)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None
    when no such process lives (a zombie counts as gone)."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Record:
    """What is on disk about one incident's candidate."""

    worktree: str
    commit: str
    pid: int | None = None
    started: int | None = None
    """The PID's start time when it was recorded: the same PID with another is someone else."""

    def alive(self) -> bool:
        return self.pid is not None and self.started is not None \
            and start_time(self.pid) == self.started


class Candidates:
    """The candidates of one git deployment, under `<state dir>/candidates/`."""

    def __init__(self, repo: Path, settings: GitTestFirst) -> None:
        self.repo, self.s = repo, settings
        self._children: dict[int, asyncio.subprocess.Process] = {}  # reaped when stopped

    def home(self, receipts: Path | None) -> Path:
        # Beside the receipts, in the state directory the daemon owns (not in the app's tree).
        base = receipts.parent if receipts is not None else Path("/tmp/rollbackd")
        return base / "candidates"

    def record_path(self, receipts: Path | None, incident: int) -> Path:
        return self.home(receipts) / f"{incident}.json"

    def read(self, receipts: Path | None, incident: int) -> Record | None:
        try:
            data = json.loads(self.record_path(receipts, incident).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StepFailed(f"the candidate record of incident {incident} cannot be read: "
                             f"{exc}") from None
        return Record(data["worktree"], data["commit"], data.get("pid"), data.get("started"))

    def _write(self, receipts: Path | None, incident: int, rec: Record) -> None:
        path = self.record_path(receipts, incident)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # -- start -------------------------------------------------------------------------------

    async def start(self, receipts: Path | None, incident: int, commit: str) -> Record:
        """Work tree, process, recorded; returns once it listens on spare_port."""
        home = self.home(receipts)
        tree = home / f"{incident}-{commit[:12]}"
        rec = Record(str(tree), commit)
        self._write(receipts, incident, rec)  # the work tree is known before it exists
        await self._git("worktree", "prune")
        await self._git("worktree", "add", "--detach", "--force", str(tree), commit)
        env = self.environment()
        log = home / f"{incident}.log"
        with open(log, "ab") as out:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.s.start, cwd=tree, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise StepFailed(f"cannot run {self.s.start[0]!r} in {tree}: "
                                 f"{exc.strerror}") from None
        self._children[proc.pid] = proc
        rec = Record(str(tree), commit, proc.pid, start_time(proc.pid))
        self._write(receipts, incident, rec)
        await self._listening(proc, log)
        return rec

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
        if self.s.env_file is not None:
            try:
                env.update(read_env_file(self.s.env_file))
            except OSError as exc:
                raise StepFailed(f"cannot read the service's env_file {self.s.env_file}: "
                                 f"{exc.strerror}") from None
        env.update(self.s.env)
        env[self.s.port_env] = str(self.s.spare_port)
        return env

    async def _listening(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        deadline = time.monotonic() + self.s.start_within
        address = (self.s.probe_host, self.s.spare_port)
        while proc.returncode is None:
            try:
                await asyncio.to_thread(_connect, address)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise StepFailed(f"the candidate (pid {proc.pid}) is not listening on "
                                     f"{address[0]}:{address[1]} after "
                                     f"{self.s.start_within:g}s: {tail(log)}") from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)
        raise StepFailed(f"the candidate exited {proc.returncode} before it listened on port "
                         f"{self.s.spare_port}: {tail(log)}")

    # -- stop --------------------------------------------------------------------------------

    async def stop(self, receipts: Path | None, incident: int) -> str:
        """Stop the recorded process, remove the work tree and the record; what was done."""
        rec = self.read(receipts, incident)
        if rec is None:
            return "no candidate was left"
        done = []
        if rec.alive():
            assert rec.pid is not None
            done.append(f"stopped the candidate (pid {rec.pid}, "
                        f"{await self._kill(rec.pid, rec.started)})")
        elif rec.pid is not None:
            done.append(f"the candidate (pid {rec.pid}) had exited")
        child = self._children.pop(rec.pid or -1, None)
        if child is not None:
            await child.wait()
        if await self._remove_tree(Path(rec.worktree)):
            done.append(f"removed its work tree {rec.worktree}")
        self.record_path(receipts, incident).unlink(missing_ok=True)
        return "; ".join(done) or "nothing of the candidate was left"

    async def _kill(self, pid: int, started: int | None) -> str:
        for sig, wait in ((signal.SIGTERM, self.s.stop_timeout), (signal.SIGKILL, 5.0)):
            if start_time(pid) != started:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)  # its own session: helpers it forked go too
            deadline = time.monotonic() + wait
            while start_time(pid) == started and time.monotonic() < deadline:
                child = self._children.get(pid)
                if child is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(child.wait()), 0.05)
                else:
                    await asyncio.sleep(0.05)
            if start_time(pid) != started:
                return "SIGTERM" if sig is signal.SIGTERM else "SIGKILL"
        if start_time(pid) == started:
            raise StepFailed(f"the candidate (pid {pid}) outlived SIGKILL")
        return "gone"

    async def _remove_tree(self, tree: Path) -> bool:
        existed = tree.exists()
        await self._git("worktree", "remove", "--force", str(tree), check=False)
        if tree.exists():  # git refused (a half-made tree): the directory goes by hand
            shutil.rmtree(tree, ignore_errors=True)
        await self._git("worktree", "prune", check=False)
        return existed

    async def _git(self, *args: str, check: bool = True) -> None:
        await run_argv(["git", "-C", str(self.repo), *args], timeout=60, check=check)

    async def worktrees(self) -> list[str]:
        """Work trees git knows of in the repo, but the main one."""
        res = await run_argv(["git", "-C", str(self.repo), "worktree", "list", "--porcelain"],
                             timeout=30, check=False)
        trees = [line.split(" ", 1)[1] for line in res.output.splitlines()
                 if line.startswith("worktree ")]
        return trees[1:]


def _connect(address: tuple[str, int]) -> None:
    socket.create_connection(address, timeout=1.0).close()


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "no output"
    return " | ".join(t[:300] for t in text) or "no output"


def describe(rec: Record | None) -> dict[str, Any]:
    return {} if rec is None else {"pid": rec.pid, "worktree": rec.worktree,
                                   "commit": rec.commit, "alive": rec.alive()}
