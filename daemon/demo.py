"""`rollbackd demo`: deploy the sample app, break it, and show the daemon roll it back."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from daemon.config import parse_config
from daemon.logs import setup_logging
from daemon.workspace import Workspace, free_port


@dataclass
class ScenarioResult:
    scenario: str
    detected: float | None
    rolled_back: float | None
    verified: float | None
    mails: int
    ok: bool


class MailSink:
    """A local SMTP server that keeps what it receives: the demo's stand-in for inboxes."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []

        sink = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
                sink.messages.append(envelope.content)  # type: ignore[attr-defined]
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> int:
        self.controller.start()
        return self.port

    def stop(self) -> None:
        self.controller.stop()


def _after(onset: float, at: datetime | None) -> float | None:
    return at.timestamp() - onset if at else None


async def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g}s")
        await asyncio.sleep(0.1)


async def _healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            return (await c.get(f"{url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


async def scenario_app_down(ws: Workspace, sink: MailSink, say: Callable[[str], None]
                            ) -> ScenarioResult:
    from daemon.app import Daemon

    config_path = ws.root / "rollbackd.toml"
    config_path.write_text(ws.config_toml(sink.port))
    config = parse_config(config_path.read_text(), str(config_path), ws.root)
    daemon = Daemon(config, config_path)
    serving = asyncio.create_task(daemon.serve(install_signals=False))
    try:
        await _wait(lambda: hasattr(daemon, "journal") and daemon.monitors, 10, "daemon start")
        good = ws.head()
        say(f"app v1 {good[:7]} deployed on {ws.url}; waiting until it is known-good ...")
        await _wait(lambda: any(e.version == good and e.known_good
                                for e in daemon.journal.ledger("grading")), 30, "known-good v1")
        say(f"v1 {good[:7]} is known-good; deploying v2, which cannot start ...")
        onset = time.time()
        bad = ws.deploy_broken()
        say(f"v2 {bad[:7]} deployed; the daemon should detect, roll back and verify")
        await _wait(lambda: daemon.journal.open_incident_for("grading") is None
                    and daemon.journal.incidents(1)
                    and daemon.journal.incidents(1)[0].closed_at is not None, 90, "resolution")
        inc = daemon.journal.incidents(1)[0]
        await _wait(lambda: daemon.journal.outbox_counts()["queued"] == 0, 15, "mail delivery")
        healthy = await _healthy(ws.url)
        ok = inc.state == "resolved" and healthy and ws.head() == good
        say(f"incident {inc.id}: {inc.state}; app healthy={healthy}; HEAD={ws.head()[:7]} "
            f"(branch main still at {bad[:7]}: resetting it is a person's call)")
        return ScenarioResult("app_down", _after(onset, inc.detected_at),
                              _after(onset, inc.rolled_back_at), _after(onset, inc.verified_at),
                              len(sink.messages), ok)
    finally:
        daemon.handle_exit(0)
        await serving


def _table(results: list[ScenarioResult]) -> str:
    def s(v: float | None) -> str:
        return f"{v:.1f}s" if v is not None else "-"

    rows = [("scenario", "detected after", "rolled back after", "verified after", "mails",
             "result")]
    rows += [(r.scenario, s(r.detected), s(r.rolled_back), s(r.verified), str(r.mails),
              "ok" if r.ok else "FAILED") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def run_demo(keep: bool = False, verbose: bool = False) -> int:
    setup_logging("info" if verbose else "warning")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))

    def say(msg: str) -> None:
        print(f"[demo] {msg}", flush=True)

    sink = MailSink()
    sink.start()
    ws: Workspace | None = None
    try:
        say(f"workspace {root}")
        ws = Workspace.create(root)
        ws.start()
        results = [asyncio.run(scenario_app_down(ws, sink, say))]
    except Exception as exc:  # the demo reports, it does not dump a traceback on the user
        say(f"FAILED: {type(exc).__name__}: {exc}")
        if ws is not None and ws.app_log.exists():
            say("last app log lines:\n" + "\n".join(ws.app_log.read_text().splitlines()[-5:]))
        results = []
    finally:
        if ws is not None:
            ws.stop()
        sink.stop()
    if results:
        print()
        print(_table(results))
        print()
    if keep:
        say(f"kept {root}; inspect it with: rollbackctl --socket {root}/state/control.sock "
            "incidents  (the daemon is stopped; the journal is state/journal.sqlite3)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    ok = bool(results) and all(r.ok for r in results)
    say("all scenarios recovered" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
