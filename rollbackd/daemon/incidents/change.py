"""One suspect of what changed between two releases, and how it was found: the record every
source of changes (git, images, templates, logs) hands back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class ChangeKind(StrEnum):
    RELEASE = "release"
    COMMIT = "commit"
    FILE = "file"
    MIGRATION = "migration"
    REQUIREMENT = "requirement"
    ENV = "env"
    IMAGE = "image"
    TEMPLATE = "template"
    LOG = "log"
    PROBE = "probe"
    NOTE = "note"
    """Not a change: why something could not be compared."""


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    text: str
    how_found: str

    def line(self) -> str:
        return f"[{self.kind}] {self.text} ({self.how_found})"

    def to_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def lines(evidence: Any) -> list[str]:
    """The mail's lines for the changes stored in an incident's evidence under "changes"."""
    stored = evidence.get("changes") if isinstance(evidence, dict) else None
    if not isinstance(stored, list):
        return []
    return [f"[{c.get('kind')}] {c.get('text')} ({c.get('how_found')})"
            for c in stored if isinstance(c, dict)]
