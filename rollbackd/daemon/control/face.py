"""What control commands may see of the daemon: a narrow face, never the whole `Daemon`.

As uvicorn hands each connection a small `ServerState`, commands get this Protocol: the live
config, the journal, the outbox, each target's monitor (and through it the target's incident
desk), the drills, and the few daemon-wide facts `status` reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rollbackd.daemon.config import Config
    from rollbackd.daemon.drills.service import DrillService
    from rollbackd.daemon.escalation.outbox import Outbox
    from rollbackd.daemon.journal.store import Journal
    from rollbackd.daemon.monitor import TargetMonitor
    from rollbackd.daemon.reload_diff import Unapplied
    from rollbackd.daemon.selfcheck import SelfCheck


class ClusterFace(Protocol):
    """With several instances on one PostgreSQL journal: who this is and who owns what."""

    instance: str

    def owners(self) -> dict[str, dict[str, Any]]: ...


class DaemonFace(Protocol):
    # Read-only properties: the daemon's own attributes satisfy them with narrower types.
    @property
    def config(self) -> Config: ...

    @property
    def journal(self) -> Journal: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def monitors(self) -> Mapping[str, TargetMonitor]: ...

    @property
    def drills(self) -> DrillService: ...

    @property
    def started_at(self) -> float: ...

    @property
    def cluster(self) -> ClusterFace | None: ...

    @property
    def selfcheck(self) -> SelfCheck: ...

    @property
    def reports_dir(self) -> Path: ...

    def summary(self) -> str: ...

    def reload(self) -> list[Unapplied] | None:
        """None: the new config was rejected; else the keys that wait for a restart."""
        ...
