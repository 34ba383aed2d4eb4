"""Argument readers shared by the commands: each refuses with `bad_args` and a plain sentence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rollbackd.daemon.control.protocol import CommandError
from rollbackd.daemon.journal import Incident
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.probes.base import parse_duration

if TYPE_CHECKING:
    from rollbackd.daemon.control.face import DaemonFace
    from rollbackd.daemon.monitor import TargetMonitor


def incident_arg(d: DaemonFace, args: dict[str, Any]) -> Incident:
    incident_id = args.get("id")
    # bool is an int subclass and 1.5 would truncate: only a real integer names an incident.
    if isinstance(incident_id, str) and incident_id.isdigit():
        incident_id = int(incident_id)
    if not isinstance(incident_id, int) or isinstance(incident_id, bool) \
            or not 0 < incident_id < 2**63:
        raise CommandError("bad_args", "an incident id (a positive whole number) is required")
    inc = d.journal.incidents.get(incident_id)
    if inc is None:
        raise CommandError("not_found", f"no incident {incident_id}")
    return inc


def target_arg(d: DaemonFace, args: dict[str, Any], required: bool = False) -> str | None:
    target = args.get("target")
    if target is None and not required:
        return None
    if not isinstance(target, str) or target not in d.monitors:
        raise CommandError("not_found", f"no target {target!r} (have: {', '.join(d.monitors)})")
    return target


def monitor_arg(d: DaemonFace, args: dict[str, Any]) -> tuple[str, TargetMonitor]:
    target = target_arg(d, args, required=True)
    assert target is not None
    return target, d.monitors[target]


def text_arg(args: dict[str, Any], name: str, required: bool = True,
             hint: str = "") -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CommandError("bad_args", f"{name} is required{hint}")
    if len(value) > 2000:
        raise CommandError("bad_args", f"{name} is longer than 2000 characters")
    return value.strip()


def flag_arg(args: dict[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise CommandError("bad_args", f"{name} must be true or false")
    return value


def int_arg(args: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise CommandError("bad_args", f"{name} must be a number from {low} to {high}")
    return value


def duration_arg(args: dict[str, Any], name: str = "for", default: str = "1h",
                 most: float = 7 * 86400) -> float:
    try:
        seconds = parse_duration(args.get(name, default))
    except ValueError as exc:
        raise CommandError("bad_args", f"--{name}: {exc}") from None
    if not 0 < seconds <= most:
        raise CommandError("bad_args", f"--{name} must be more than 0 and at most {most:g}s")
    return seconds


def ledger_version(entries: list[LedgerEntry], version: Any) -> LedgerEntry:
    """The ledger entry named by a full version or an unambiguous prefix of at least 4 chars."""
    if not isinstance(version, str) or not version.strip():
        raise CommandError("bad_args", "a version (a commit, a digest, a revision) is required")
    version = version.strip()
    exact = [e for e in entries if e.version == version]
    found = exact or ([e for e in entries if e.version.startswith(version)]
                      if len(version) >= 4 else [])
    if not found:
        raise CommandError("not_found", f"{version!r} is not in the ledger; "
                           "`rollbackctl known-good list TARGET` shows what is")
    if len(found) > 1:
        names = ", ".join(e.version[:12] for e in found[:5])
        raise CommandError("bad_args", f"{version!r} is ambiguous: {names}")
    return found[0]
