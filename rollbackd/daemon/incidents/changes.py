"""What changed between the known-good and the failing release: the suspects an incident names.

Everything here is read from the deployment's git repository (argv lists, never a shell) and
from the files as committed in the two releases. Each `Change` says how it was found. No value
is ever shown: environment files give key names only, requirement URLs are left out, and an
Alembic `op.execute` is named without its SQL.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.policies.ledger import LedgerEntry, rollback_target

if TYPE_CHECKING:
    from rollbackd.daemon.config import TargetConfig

log = logging.getLogger("rollbackd.changes")

TIMEOUT = 10.0
"""Seconds the whole search may take: it must never hold an incident's opening up for long."""
GIT_TIMEOUT = 5.0
"""Seconds one git command may take (the caller bounds the whole search too)."""
MOST_COMMITS = 20
MOST_FILES = 30
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


class ChangeKind(StrEnum):
    RELEASE = "release"
    COMMIT = "commit"
    FILE = "file"
    MIGRATION = "migration"
    REQUIREMENT = "requirement"
    ENV = "env"
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


@dataclass(frozen=True)
class Sources:
    """Where to look: the git work tree and the files of interest in it."""

    repo: Path
    requirements: Sequence[str] = ("requirements.txt",)
    env_files: Sequence[Path] = ()
    """The deployment's env files named in the settings (database.env_file, key.file)."""


async def between(src: Sources, good: str, bad: str) -> list[Change]:
    """The changes from `good` to `bad` in the repository, each with how it was found."""
    for commit in (good, bad):
        if not _SHA.match(commit):
            raise ValueError(f"not a commit id: {commit[:40]!r}")
    git = _Git(src.repo)
    out: list[Change] = []
    short = f"{good[:12]}..{bad[:12]}"
    log = await git("log", "--oneline", "--no-decorate", f"-n{MOST_COMMITS}", f"{good}..{bad}")
    out += [Change(ChangeKind.COMMIT, ln.strip(), f"git log --oneline {short}")
            for ln in log.splitlines() if ln.strip()]
    # Wide enough that git does not shorten paths; one space between the columns.
    stat = [" ".join(ln.split()) for ln in
            (await git("diff", "--stat=200,160", good, bad)).splitlines() if ln.strip()]
    out += [Change(ChangeKind.FILE, ln, f"git diff --stat {short}")
            for ln in stat[:-1][:MOST_FILES] + stat[-1:]]
    status = await git("diff", "--name-status", "--no-renames", good, bad)
    changed = [(ln[0], ln.split("\t", 1)[1]) for ln in status.splitlines() if "\t" in ln]
    for st, path in changed:
        if _is_migration(path):
            out += await _migration(git, st, path, good, bad)
    wanted = set(src.requirements)
    for _, path in changed:
        if path in wanted:
            out += _requirements(path, await git.show(good, path), await git.show(bad, path))
    out += await _env_files(git, src, [p for _, p in changed], good, bad)
    return out


async def suspects(config: TargetConfig, ledger: Sequence[LedgerEntry], version: str | None,
                   first_failing: Change | None = None,
                   timeout: float = TIMEOUT) -> list[dict[str, str]]:
    """What an incident stores under evidence "changes": the probe that failed first, then the
    changes from the newest known-good release to `version`. Never raises; bounded by
    `timeout`, since nothing here may keep an incident from opening."""
    found = [first_failing] if first_failing is not None else []
    try:
        found += await asyncio.wait_for(_deployment(config, ledger, version), timeout)
    except TimeoutError:
        found.append(Change(ChangeKind.NOTE, f"the search took over {timeout:g}s and was "
                            "stopped", "what changed"))
    except Exception as exc:  # the incident opens whatever went wrong here
        log.warning("changes status=error reason=%r", f"{type(exc).__name__}: {exc}")
        found.append(Change(ChangeKind.NOTE, f"could not be found: {type(exc).__name__}",
                            "what changed"))
    return [c.to_dict() for c in found]


async def _deployment(config: TargetConfig, ledger: Sequence[LedgerEntry],
                      version: str | None) -> list[Change]:
    dep = config.deployment
    if dep is None or dep.kind != "git" or version is None:
        return []
    good = rollback_target(list(ledger), version)
    if good is None:
        return [Change(ChangeKind.NOTE, f"no known-good release before {version[:12]} to "
                       "compare with", "the known-good ledger")]
    env_files = [f for f in (getattr(config.database, "env_file", None),
                             config.key.file if config.key and config.key.env_var else None)
                 if f is not None]
    src = Sources(dep.repo, tuple(dep.requirements), tuple(env_files))
    compared = Change(ChangeKind.RELEASE, f"known-good {good.version[:12]} -> failing "
                      f"{version[:12]}", "the known-good ledger")
    return [compared, *await between(src, good.version, version)]


class _Git:
    def __init__(self, repo: Path) -> None:
        self.repo = repo

    async def __call__(self, *args: str) -> str:
        res = await run_argv(["git", "-C", str(self.repo), *args], timeout=GIT_TIMEOUT)
        return res.output

    async def show(self, commit: str, path: str) -> str | None:
        """The file as committed, or None where the commit does not have it."""
        res = await run_argv(["git", "-C", str(self.repo), "show", f"{commit}:{path}"],
                             timeout=GIT_TIMEOUT, check=False)
        return res.output if res.returncode == 0 else None


# -- Alembic migrations ---------------------------------------------------------------------

def _is_migration(path: str) -> bool:
    p = PurePosixPath(path)
    return p.suffix == ".py" and p.parent.name == "versions" and not p.name.startswith("__")


async def _migration(git: _Git, st: str, path: str, good: str, bad: str) -> list[Change]:
    if st == "D":
        text = await git.show(good, path)
        verb, at = "removed", good
    else:
        text = await git.show(bad, path)
        verb, at = ("new" if st == "A" else "changed"), bad
    how = f"read with ast from {path} at {at[:12]}"
    if text is None:
        return []
    try:
        ops = upgrade_ops(text)
    except SyntaxError as exc:
        return [Change(ChangeKind.MIGRATION, f"{verb} migration {path}: cannot be parsed "
                       f"(line {exc.lineno})", how)]
    name = PurePosixPath(path).name
    if not ops:
        return [Change(ChangeKind.MIGRATION, f"{verb} migration {name}: upgrade() has no op.* "
                       "call", how)]
    return [Change(ChangeKind.MIGRATION, f"{verb} migration {name}: {op}", how) for op in ops]


def upgrade_ops(source: str) -> list[str]:
    """The `op.*` calls of a migration's upgrade(), each as one short phrase."""
    tree = ast.parse(source)
    upgrade = next((f for f in tree.body if isinstance(f, ast.FunctionDef)
                    and f.name == "upgrade"), None)
    if upgrade is None:
        return []
    batches = _batch_tables(upgrade)
    out: list[str] = []
    for node in _in_order(upgrade):
        if not (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
            continue
        table = batches.get(node.func.value.id)
        # op.f() only names a constraint; batch_alter_table opens the block its calls are in.
        if (node.func.value.id == "op" or table is not None) \
                and node.func.attr not in ("f", "batch_alter_table"):
            out.append(_describe(node.func.attr, node, table))
    return out


def _in_order(fn: ast.FunctionDef) -> Iterable[ast.Call]:
    """The calls in source order (ast.walk is breadth first)."""
    return sorted((n for n in ast.walk(fn) if isinstance(n, ast.Call)),
                  key=lambda n: (n.lineno, n.col_offset))


def _batch_tables(fn: ast.FunctionDef) -> dict[str, str]:
    """`with op.batch_alter_table("users") as batch_op:` -> {"batch_op": "users"}."""
    found: dict[str, str] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.With):
            for item in node.items:
                call, var = item.context_expr, item.optional_vars
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                        and call.func.attr == "batch_alter_table" and isinstance(var, ast.Name):
                    found[var.id] = _str(call.args[0] if call.args else None) or "?"
    return found


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _describe(op: str, call: ast.Call, table: str | None) -> str:
    args: list[ast.AST] = list(call.args)
    if table is None and args:
        table = _str(args.pop(0))
    table = table or "?"
    if op == "execute":
        return "execute (raw SQL, not shown)"
    if op in ("create_table", "drop_table"):
        return f"{op} {table}"
    if op == "rename_table":
        return f"rename_table {table} -> {_str(args[0] if args else None) or '?'}"
    if op == "add_column":
        col = args[0] if args else _kw(call, "column")
        name = _str(col.args[0]) if isinstance(col, ast.Call) and col.args else None
        nullable = _kw(col, "nullable") if isinstance(col, ast.Call) else None
        null = "not null" if isinstance(nullable, ast.Constant) and nullable.value is False \
            else "nullable"
        return f"add_column {table}.{name or '?'} ({null})"
    column = _str(args[0] if args else _kw(call, "column_name")) or "?"
    if op == "alter_column":
        new = _str(_kw(call, "new_column_name"))
        what = [f"-> {new}"] if new else []
        nullable = _kw(call, "nullable")
        if isinstance(nullable, ast.Constant) and isinstance(nullable.value, bool):
            what.append("nullable" if nullable.value else "not null")
        if _kw(call, "type_") is not None:
            what.append("type changed")
        return f"alter_column {table}.{column}" + (" " + ", ".join(what) if what else "")
    if op == "drop_column":
        return f"drop_column {table}.{column}"
    if op in ("create_index", "drop_index"):
        name = _str(call.args[0]) if call.args else None
        return f"{op} {name or '?'}"
    return f"{op} {table}"


# -- requirements ---------------------------------------------------------------------------

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def _pins(text: str | None) -> dict[str, str]:
    """Package (normalized name) -> its version specifier; URLs (which may carry a token) are
    never kept, only that there is one."""
    found: dict[str, str] = {}
    for raw in (text or "").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = _NAME.match(line)
        if m is None:
            continue
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        spec = m.group(3).split(";", 1)[0].strip()
        found[name] = "(a URL, not shown)" if "://" in spec or spec.startswith("@") else spec
    return found


def _requirements(path: str, old: str | None, new: str | None) -> list[Change]:
    before, after = _pins(old), _pins(new)
    how = f"{path} compared between the two commits"
    out = []
    for name in sorted(before.keys() | after.keys()):
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        if b is None:
            text = f"{name} added {a or '(any version)'}"
        elif a is None:
            text = f"{name} removed (was {b or 'any version'})"
        else:
            text = f"{name} {b.removeprefix('==') or 'any'} -> {a.removeprefix('==') or 'any'}"
        out.append(Change(ChangeKind.REQUIREMENT, text, how))
    return out


# -- environment files: key names only ------------------------------------------------------

def _looks_like_env(path: str) -> bool:
    name = PurePosixPath(path).name
    return name == ".env" or name.startswith(".env.") or name.endswith(".env")


def env_keys(text: str | None) -> dict[str, str]:
    """KEY -> value of an env file (compared here, never returned to a caller outside)."""
    found: dict[str, str] = {}
    for raw in (text or "").splitlines():
        line = raw.strip().removeprefix("export ").strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found[key.strip()] = value.strip().strip("\"'")
    return found


async def _env_files(git: _Git, src: Sources, changed: list[str], good: str,
                     bad: str) -> list[Change]:
    repo = src.repo.resolve()
    paths: dict[str, str] = {}
    out: list[Change] = []
    for f in src.env_files:
        try:
            paths[f.resolve().relative_to(repo).as_posix()] = "the deployment's env file"
        except ValueError:
            out.append(Change(ChangeKind.NOTE, f"env file {f} is outside the repository: its "
                              "keys were not compared", "deployment settings"))
    for path in changed:
        if _looks_like_env(path):
            paths.setdefault(path, "an env file the commits changed")
    for path, why in paths.items():
        before = env_keys(await git.show(good, path))
        after = env_keys(await git.show(bad, path))
        how = f"keys of {path} ({why}) compared between the two commits; values not shown"
        for key in sorted(after.keys() - before.keys()):
            out.append(Change(ChangeKind.ENV, f"{key} added in {path}", how))
        for key in sorted(before.keys() - after.keys()):
            out.append(Change(ChangeKind.ENV, f"{key} removed from {path}", how))
        for key in sorted(k for k in before.keys() & after.keys() if before[k] != after[k]):
            out.append(Change(ChangeKind.ENV, f"{key} changed in {path}", how))
    return out
