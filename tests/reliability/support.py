"""Helpers for the reliability suite: side-effect counters, mail accounting, journal checks."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess, SmtpSink, wait_for

# Wraps an argv: appends one line (its pid) to a marker file, then becomes the real command.
# Counting lines counts how often the step really ran the command, whatever the journal says.
COUNTER = """\
import os, sys
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()}\\n")
    f.flush()
    os.fsync(f.fileno())
os.execv(sys.argv[2], sys.argv[2:])
"""


def counted(argv: list[str], marker: Path) -> list[str]:
    """`argv`, run through the counter: each run adds one line to `marker`."""
    script = marker.parent / "count_and_exec.py"
    if not script.exists():
        script.write_text(COUNTER)
    return [sys.executable, str(script), str(marker), *argv]


def runs(marker: Path) -> int:
    return len(marker.read_text().split()) if marker.exists() else 0


def toml_argv(argv: list[str]) -> str:
    return json.dumps(argv)


def journal_rows(d: DaemonProcess, sql: str, *args: Any) -> list[sqlite3.Row]:
    with closing(d.db()) as db:
        return db.execute(sql, args).fetchall()


def integrity_ok(d: DaemonProcess) -> bool:
    with closing(d.db()) as db:
        return bool(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok")


def unsent(d: DaemonProcess) -> list[sqlite3.Row]:
    return journal_rows(d, "SELECT * FROM outbox WHERE sent_at IS NULL")


def delivered(smtp: SmtpSink) -> Counter[tuple[str, str]]:
    """(recipient, Message-ID) -> how many copies the real SMTP server accepted."""
    return Counter((rcpt, str(m["Message-ID"])) for rcpts, m in smtp.messages for rcpt in rcpts)


def assert_no_mail_lost(d: DaemonProcess, smtp: SmtpSink, timeout: float = 30.0) -> int:
    """Every mail the journal queued reached the server, once per recipient; none is left
    unsent; every mail held back for a storm digest is in a digest that went out. Returns the
    number of messages the server accepted."""
    wait_for(lambda: not unsent(d), timeout, f"the outbox to drain\n{d.log_text()[-3000:]}")
    # Sent in the journal is sent at the server: the server has accepted it before the journal
    # marks it; give the SMTP thread a moment to hand the last one over.
    rows = journal_rows(d, "SELECT message_id, recipients FROM outbox")
    expected = Counter((rcpt, r["message_id"]) for r in rows for rcpt in json.loads(r["recipients"]))
    wait_for(lambda: set(delivered(smtp)) >= set(expected), 10,
             f"every journaled mail at the server: missing "
             f"{set(expected) - set(delivered(smtp))}")
    got = delivered(smtp)
    assert got == expected, f"server {got} != journal {expected}"
    held = journal_rows(d, "SELECT digest_message_id FROM mail_held")
    digests = {r["message_id"] for r in rows}
    assert all(h["digest_message_id"] in digests for h in held), "a held mail in no digest"
    return len(smtp.messages)


def step_counts(d: DaemonProcess, incident_id: int) -> dict[str, Counter[str]]:
    """step name -> Counter of its journal rows' states."""
    found: dict[str, Counter[str]] = {}
    for r in journal_rows(d, "SELECT name, state FROM steps WHERE incident_id = ?", incident_id):
        found.setdefault(r["name"], Counter())[r["state"]] += 1
    return found


def wait_exit(d: DaemonProcess, timeout: float, what: str) -> int:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while d.proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                 f"{d.log_text()[-4000:]}")
        time.sleep(0.05)
    return d.proc.returncode


def incident_in(d: DaemonProcess, *states: str) -> dict[str, Any] | None:
    found = [i for i in d.result("incidents") if i["state"] in states]
    return found[0] if found else None
