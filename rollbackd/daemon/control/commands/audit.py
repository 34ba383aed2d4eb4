"""The audit log of control commands: recent entries, and verification of its keyed chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.commands.args import flag_arg, int_arg
from rollbackd.daemon.control.commands.registry import command
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.server import Peer

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace


@command("audit", "recent control commands (limit N), or verify=true: check the hash chain")
async def _audit(d: DaemonFace, args: dict[str, Any], peer: Peer) -> Any:
    if flag_arg(args, "verify"):
        audit = d.journal.audit.verify()
        if audit.broken is not None:
            raise CommandError("audit_broken", f"audit chain broken at row {audit.broken}: "
                               f"{audit.why}; {audit.checked} rows before it verify")
        # This call is audited after the check: it is not among the rows it counted.
        return {"verified": True, "rows": audit.checked}
    limit = int_arg(args, "limit", 20, 1, 10000)
    return [{"id": r.id, "at": r.at.isoformat(timespec="milliseconds"), "uid": r.uid,
             "pid": r.pid, "cmd": r.cmd, "args": r.args, "outcome": r.outcome}
            for r in d.journal.audit.recent(limit)]
