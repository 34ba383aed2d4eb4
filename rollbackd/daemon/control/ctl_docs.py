"""Man pages and bash/zsh completion for rollbackd and rollbackctl, generated from their argparse
parsers by kept libraries (argparse-manpage, shtab): `python -m rollbackd.daemon.control.ctl_docs` rewrites
the files under share/; tests/control/test_ctl_docs.py fails when they are stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARE = ROOT / "share"


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from rollbackd.daemon.cli import build_parser as rollbackd
    from rollbackd.daemon.control.ctl import build_parser as rollbackctl

    return {"rollbackd": rollbackd, "rollbackctl": rollbackctl}


def _manpage(parser: argparse.ArgumentParser) -> str:
    from build_manpages.manpage import Manpage

    from rollbackd.daemon.control.ctl import version

    # The version stands where the date would: a page dated the day it was made is stale the
    # next day; one marked with the release changes only with it.
    page = Manpage(parser, _data={"project_name": "rollbackd", "date": f"version {version()}",
                                  "manual": "rollbackd manual"})
    return str(page).rstrip() + "\n"


def generated() -> dict[Path, str]:
    """Path (relative to the repository) -> its text."""
    import shtab

    files: dict[Path, str] = {}
    for prog, build in _parsers().items():
        files[Path("share/man/man1") / f"{prog}.1"] = _manpage(build())
        files[Path("share/bash-completion/completions") / prog] = shtab.complete(build(), "bash")
        files[Path("share/zsh/site-functions") / f"_{prog}"] = shtab.complete(build(), "zsh")
    return files


def main() -> int:
    for rel, text in generated().items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
