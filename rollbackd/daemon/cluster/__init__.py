"""Several instances sharing one PostgreSQL journal: who owns which target, mail sent once.

`Cluster.for_config` is None with the SQLite journal: one instance, which owns everything.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from rollbackd.daemon.cluster.mail import ClaimingOutbox, OwnedLadders, pg_connection
from rollbackd.daemon.cluster.ownership import Host, Ownership
from rollbackd.daemon.cluster.session import OWNERS_SQL, SCHEMA
from rollbackd.daemon.cluster.timing import Timing
from rollbackd.daemon.config import Config
from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.control.redact import redact
from rollbackd.daemon.escalation.outbox import Outbox
from rollbackd.daemon.journal.backend import journal_dsn
from rollbackd.daemon.journal.escalations import Escalations
from rollbackd.daemon.journal.lock_keys import MIGRATE_KEY
from rollbackd.daemon.journal.store import Journal

OWNER_ONLY = frozenset({"rollback", "approve", "backup", "drill"})
"""Control commands that act on a target: only its owner runs them."""


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Cluster:
    def __init__(self, host: Host, journal: Journal, config: Config) -> None:
        self.host = host
        self.journal = journal
        self.instance = config.daemon.instance or default_instance()
        self.timing = Timing(config.daemon.takeover_after)
        db = pg_connection(journal)
        with db.session_lock(MIGRATE_KEY):
            for ddl in SCHEMA:
                db.ready().execute(ddl)
        self.ownership = Ownership(host, journal_dsn(config), self.instance, self.timing)

    @classmethod
    def for_config(cls, host: Host, journal: Journal, config: Config) -> Cluster | None:
        if config.daemon.journal_backend != "postgresql":
            return None
        return cls(host, journal, config)

    def outbox(self, config: Config) -> Outbox:
        return ClaimingOutbox(self.journal, config, self.instance)

    def ladders(self) -> Escalations:
        """What the tier checker reads: the ladders of the targets this instance owns."""
        return OwnedLadders(self.journal, self.ownership.active)

    def start(self) -> None:
        self.ownership.start()

    def quiesce(self) -> None:
        """Shutting down: keep what is owned (and renew it), take and start nothing more."""
        self.ownership.quiescing = True

    async def stop(self) -> None:
        await self.ownership.stop()

    def adopt(self) -> None:
        self.ownership.adopt()

    def may_act(self, target: str) -> bool:
        return self.ownership.may_act(target)

    def owners(self) -> dict[str, dict[str, Any]]:
        """Each target's owner now (None: nobody holds it), from the lease table and pg_locks."""
        found: dict[str, dict[str, Any]] = {}
        for r in self.journal.db.execute(OWNERS_SQL).fetchall():
            owner = r["owner"] if r["held"] and r["owner"] else None
            found[r["target"]] = {
                "owner": owner, "epoch": r["epoch"],
                "since": r["active_at"].isoformat() if owner and r["active_at"] else None,
                "heartbeat": r["heartbeat_at"].isoformat() if r["heartbeat_at"] else None,
            }
        return found

    def check_command(self, cmd: str, args: dict[str, Any], peer: Any) -> None:
        """Refuse (and audit) a command that would act for a target another instance owns."""
        if cmd not in OWNER_ONLY:
            return
        target = args.get("target")
        if not isinstance(target, str):
            incident_id = args.get("id")
            if isinstance(incident_id, str) and incident_id.isdigit():
                incident_id = int(incident_id)
            incident = self.journal.incidents.get(incident_id) \
                if type(incident_id) is int and 0 < incident_id < 2**63 else None
            target = incident.target if incident else None
        if target is None or target not in self.host.monitors or self.may_act(target):
            return  # the command itself says what is wrong with its arguments
        owner = self.owners().get(target, {}).get("owner")
        self.journal.audit.record(peer.uid, peer.pid, cmd, redact(args), "error:not_owner")
        raise CommandError(
            "not_owner", f"target {target} is owned by instance {owner or '(none right now)'}, "
            f"this is {self.instance}: send the command to the owner's control socket")


__all__ = ["Cluster", "Host", "Ownership", "Timing", "default_instance"]
