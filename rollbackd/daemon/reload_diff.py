"""What a reload cannot apply: keys read once at start (sockets, listeners, the journal), compared
between the running and the new config. Pure: the daemon keeps the old values and says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollbackd.daemon.config import Config, DaemonSettings
from rollbackd.daemon.secrets import SecretValue

APPLIED_LIVE = frozenset({"test_hooks"})
"""[daemon] keys read each time they are used: a reload applies them."""


@dataclass(frozen=True)
class Unapplied:
    """One key whose new value waits for a restart; the old one stays in force."""

    key: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.key}: {self.old} -> {self.new} (needs a restart; {self.old} stays)"


def _shown(value: Any) -> str:
    if isinstance(value, SecretValue):
        return f"secret {value.source}"  # never the value itself
    if value is None:
        return "unset"
    return repr(str(value)) if not isinstance(value, list | bool | int | float) else str(value)


def _differences(prefix: str, old: Any, new: Any, keys: list[str]) -> list[Unapplied]:
    found = []
    for key in keys:
        before = getattr(old, key, None) if old is not None else None
        after = getattr(new, key, None) if new is not None else None
        if _comparable(before) != _comparable(after):
            found.append(Unapplied(f"{prefix}.{key}", _shown(before), _shown(after)))
    return found


def _comparable(value: Any) -> Any:
    # A secret counts as changed when its source or its content changed.
    return (value.source, value.value) if isinstance(value, SecretValue) else value


def unapplied(old: Config, new: Config) -> list[Unapplied]:
    """Keys that differ between the running config and the new one and need a restart."""
    daemon_keys = [k for k in DaemonSettings.model_fields if k not in APPLIED_LIVE]
    found = _differences("daemon", old.daemon, new.daemon, daemon_keys)
    if (old.alerts is None) != (new.alerts is None):
        found.append(Unapplied("alerts", "on" if old.alerts else "off",
                               "on" if new.alerts else "off"))
    elif old.alerts is not None:
        found += _differences("alerts", old.alerts, new.alerts, list(type(old.alerts).model_fields))
    return found


def as_applied(old: Config, new: Config) -> Config:
    """The new config with every key that needs a restart at its running value."""
    daemon = old.daemon.model_copy(update={k: getattr(new.daemon, k) for k in APPLIED_LIVE})
    return new.model_copy(update={"daemon": daemon, "alerts": old.alerts})
