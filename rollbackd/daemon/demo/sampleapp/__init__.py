"""Sample grading web app shipped with rollbackd as the reference deployment target."""

from __future__ import annotations

import shutil
from pathlib import Path

TEMPLATE_DIR: Path = Path(__file__).resolve().parent / "template"

# Build and tool artefacts (a dev may run tools inside the template) must never end up
# committed in the app's git repository.
_IGNORED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.pyo", ".mypy_cache", ".pytest_cache", ".ruff_cache", "*.db"
)


def scaffold(dest: Path) -> None:
    """Copy the app's source tree into dest (created if missing), over any existing files."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(TEMPLATE_DIR, dest, ignore=_IGNORED, dirs_exist_ok=True)
    # The running app writes bytecode beside its sources: not a local edit of the deployment
    # (a rollback holds for those). Written here: package data leaves dotfiles out.
    (dest / ".gitignore").write_text("__pycache__/\n*.pyc\n")


__all__ = ["TEMPLATE_DIR", "scaffold"]
