"""Control commands by name, each with its help text; every call is written to the audit log.

One registry (registry.COMMANDS); the modules below register their commands on import.
"""

from rollbackd.daemon.control.commands import (  # noqa: F401 - imported for their registrations
    approvals,
    audit,
    backups,
    drills,
    emergency,
    incidents,
    overrides,
    process,
    rollback,
    safety,
)
from rollbackd.daemon.control.commands.registry import COMMANDS, Command, audit_refused, command, dispatch

__all__ = ["COMMANDS", "Command", "audit_refused", "command", "dispatch"]
