"""Requests that never ran as asked are audited too: a command that crashed, a refused peer."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rollbackd.daemon.control.commands import COMMANDS, Command, audit_refused, dispatch
from rollbackd.daemon.control.server import Peer
from rollbackd.daemon.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal(tmp_path / "state" / "journal.sqlite3")
    yield j
    j.close()


async def test_a_command_that_crashed_is_audited(journal: Journal,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def crash(d: Any, args: dict[str, Any], peer: Peer) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(COMMANDS, "crash", Command(crash, "crashes"))
    d: Any = SimpleNamespace(journal=journal)
    with pytest.raises(ZeroDivisionError):  # the server's catch-all turns it into a reply
        await dispatch(d, "crash", {"target": "web", "password": "hunter2"}, Peer(42, 1000, 1000))
    (row,) = journal.audit.recent(10)
    assert (row.uid, row.pid, row.cmd, row.outcome) == \
        (1000, 42, "crash", "error:internal:ZeroDivisionError")
    assert row.args == {"target": "web", "password": "<redacted>"}
    assert journal.audit.verify() == (1, None, "")


def test_a_refused_peer_is_audited_without_its_arguments(journal: Journal) -> None:
    d: Any = SimpleNamespace(journal=journal)
    audit_refused(d, Peer(7, 65534, 65534), "rollback")
    (row,) = journal.audit.recent(10)
    assert (row.uid, row.pid, row.cmd, row.args, row.outcome) == \
        (65534, 7, "rollback", {}, "error:forbidden")
