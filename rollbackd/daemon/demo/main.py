"""`rollbackd demo`: every decision-tree scenario, run as a drill against the sample app (git,
SQLite, Alembic, a Fernet key) and, when a Docker engine is reachable, a Docker app too."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rollbackd.daemon.demo.run import DemoSession, MailSink, Row
from rollbackd.daemon.demo.workspace import free_port
from rollbackd.daemon.drills.text import columns, secs
from rollbackd.daemon.logs import setup_logging

__all__ = ["MailSink", "run_demo"]


def table(rows: list[Row]) -> str:
    out = [("scenario", "detected after", "rolled back after", "verified after", "mails",
            "result")]
    for r in rows:
        t = r.run.timings if r.run else {}
        result = (f"skipped: {r.note}" if r.skipped else "ok" if r.ok
                  else f"FAILED: {r.run.reason if r.run else '?'}")
        out.append((r.label, secs(t.get("detected")), secs(t.get("rolled_back")),
                    secs(t.get("verified")), str(r.mails) if r.run else "-", result))
    return columns(out)


async def _demo(root: Path, say: Callable[[str], None], docker_host: str | None) -> list[Row]:
    rows: list[Row] = []
    async with DemoSession(root, say, docker_host=docker_host) as session:
        for label, target, scenario in session.targets():
            rows.append(await session.drill(label, target, scenario))
        if session.docker is not None:  # a kept workspace's config must not name removed parts
            session.config_path.write_text(session.config_text(docker=False))
    return rows


class Say:
    def __call__(self, msg: str) -> None:
        print(f"[demo] {msg}", flush=True)


def keep_config(root: Path) -> tuple[int, str]:
    """Points the kept config's mail at a port for a local maildir sink and turns metrics on.

    Not the local MTA: the demo's contacts are example.com addresses, which an MTA would try
    to deliver out of this machine. Returns (smtp port, metrics address).
    """
    config = root / "rollbackd.toml"
    smtp_port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    text = re.sub(r"(?m)^(\[smtp\]\nhost = \"127\.0\.0\.1\"\nport = )\d+$",
                  rf"\g<1>{smtp_port}", config.read_text(), count=1)
    text = text.replace('metrics_address = ""', f'metrics_address = "{metrics}"', 1)
    config.write_text(text)
    return smtp_port, metrics


def _kept(root: Path) -> str:
    state = root / "state"
    smtp_port, metrics = keep_config(root)
    return (f"kept {root}. The daemon and the app are stopped; to look around with them:\n"
            f"  {sys.executable} -m aiosmtpd -n -l 127.0.0.1:{smtp_port} "
            f"-c aiosmtpd.handlers.Mailbox {root / 'mail'} &\n"
            f"  {sys.executable} -m rollbackd.daemon.demo.sampleapp.service start --dir {root / 'app'} "
            f"--pidfile {root / 'run' / 'app.pid'} --log {root / 'log' / 'app.log'} "
            f"--env-file {root / 'app.env'}\n"
            f"  rollbackd run --config {root / 'rollbackd.toml'} &\n"
            f"  export ROLLBACKCTL_SOCKET={state / 'control.sock'}\n"
            "  rollbackctl status; rollbackctl incidents; rollbackctl drills; "
            "rollbackctl show 1 --report\n"
            f"  curl -s http://{metrics}/metrics | grep ^rollbackd_\n"
            f"Mail goes to the maildir {root / 'mail'} (new/ holds one file per mail); metrics "
            f"at http://{metrics}/metrics. Reports (incidents and drills): {state / 'reports'}; "
            f"journal: {state / 'journal.sqlite3'}")


def run_demo(keep: bool = False, verbose: bool = False, docker_host: str | None = None) -> int:
    setup_logging("info" if verbose else "warning")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if not verbose:  # a probe run skipped while the previous one still runs is no news here
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))
    say = Say()
    started = time.monotonic()
    say(f"workspace {root}")
    try:
        rows = asyncio.run(_demo(root, say, docker_host))
    except Exception as exc:  # the demo reports, it does not dump a traceback on the user
        say(f"FAILED: {type(exc).__name__}: {exc}")
        log = root / "log" / "app.log"
        if log.exists():
            say("last app log lines:\n" + "\n".join(log.read_text().splitlines()[-5:]))
        rows = []
    if rows:
        print(f"\n{table(rows)}\n")
    if keep:
        say(_kept(root))
    else:
        shutil.rmtree(root, ignore_errors=True)
    ok = bool(rows) and all(r.ok for r in rows)
    say(f"{'every scenario recovered' if ok else 'demo FAILED'} in "
        f"{time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_demo())
