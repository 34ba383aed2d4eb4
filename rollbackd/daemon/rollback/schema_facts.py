"""What the migrations between two schema revisions did, read from the deployed commit's
Alembic scripts with ast (never imported, never run), and the rows they put at stake, counted
by the database executor: the facts rollbackd/policies/schema.py judges a code rollback by."""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rollbackd.daemon.incidents.changes import _batch_tables, _in_order, _is_migration, _kw, _str
from rollbackd.daemon.rollback.commands import run_argv
from rollbackd.policies.schema import DROPS, RENAMES, Migration, MigrationOp, OpKind, SchemaFacts

log = logging.getLogger("rollbackd.schema")

GIT_TIMEOUT = 5.0
MOST_MIGRATIONS = 50
"""A chain longer than this is not read (and not judged)."""


@runtime_checkable
class CountsRows(Protocol):
    """A database executor that can count the rows of named tables (None: cannot, or none)."""

    async def count_rows(self, tables: Sequence[str]
                         ) -> dict[str, tuple[int | None, str | None]]:
        """Per table: (rows, where counted when not the live database)."""
        ...


def _ops(fn: ast.FunctionDef | None) -> tuple[MigrationOp, ...]:
    if fn is None:
        return ()
    batches = _batch_tables(fn)
    found = []
    for node in _in_order(fn):
        if not (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
            continue
        table = batches.get(node.func.value.id)
        if (node.func.value.id == "op" or table is not None) \
                and node.func.attr not in ("f", "batch_alter_table"):
            found.append(_op(node.func.attr, node, table))
    return tuple(found)


def _op(name: str, call: ast.Call, table: str | None) -> MigrationOp:
    args: list[ast.AST] = list(call.args)
    if table is None and name not in ("execute", "create_index", "drop_index") and args:
        table = _str(args.pop(0))
    table = table or "?"
    if name == "execute":
        return MigrationOp(OpKind.OTHER, "?", text="execute (raw SQL, not shown)")
    if name in ("create_index", "drop_index"):
        kind = OpKind.ADD_INDEX if name == "create_index" else OpKind.DROP_INDEX
        return MigrationOp(kind, table, text=f"{name} {_str(args[0] if args else None) or '?'}")
    if name == "create_table":
        return MigrationOp(OpKind.ADD_TABLE, table, text=f"create_table {table}")
    if name == "drop_table":
        return MigrationOp(OpKind.DROP_TABLE, table, text=f"drop_table {table}")
    if name == "rename_table":
        new = _str(args[0] if args else _kw(call, "new_table_name"))
        return MigrationOp(OpKind.RENAME_TABLE, table, new_name=new,
                           text=f"rename_table {table} -> {new or '?'}")
    if name == "add_column":
        col = args[0] if args else _kw(call, "column")
        cname = _str(col.args[0]) if isinstance(col, ast.Call) and col.args else None
        nullable = _kw(col, "nullable") if isinstance(col, ast.Call) else None
        not_null = isinstance(nullable, ast.Constant) and nullable.value is False
        default = isinstance(col, ast.Call) and _kw(col, "server_default") is not None
        return MigrationOp(OpKind.ADD_COLUMN, table, cname, nullable=not not_null,
                           has_default=default,
                           text=f"add_column {table}.{cname or '?'} "
                                f"({'not null' if not_null else 'nullable'})")
    column = _str(args[0] if args else _kw(call, "column_name"))
    if name == "drop_column":
        return MigrationOp(OpKind.DROP_COLUMN, table, column,
                           text=f"drop_column {table}.{column or '?'}")
    if name == "alter_column":
        new = _str(_kw(call, "new_column_name"))
        if new:
            return MigrationOp(OpKind.RENAME_COLUMN, table, column, new_name=new,
                               text=f"alter_column {table}.{column or '?'} -> {new}")
        return MigrationOp(OpKind.ALTER_COLUMN, table, column,
                           text=f"alter_column {table}.{column or '?'}")
    return MigrationOp(OpKind.OTHER, table, text=f"{name} {table}")


def _assigned(tree: ast.Module, name: str) -> Any:
    for node in tree.body:
        target: ast.expr
        value: ast.expr | None
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id == name and value is not None:
            try:
                return ast.literal_eval(value)
            except ValueError:
                return None
    return None


def _raises(fn: ast.FunctionDef | None) -> bool:
    """downgrade() that raises, or does nothing the schema would show: it undoes nothing."""
    if fn is None:
        return True
    return any(isinstance(n, ast.Raise) for n in ast.walk(fn)) or not _ops(fn)


def parse(source: str, name: str) -> tuple[str | None, str | None, Migration]:
    """(revision, down_revision, the migration) of one Alembic script's text."""
    tree = ast.parse(source)
    fns = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    down = _assigned(tree, "down_revision")
    revision = _assigned(tree, "revision")
    up = _ops(fns.get("upgrade"))
    return (revision if isinstance(revision, str) else None,
            down if isinstance(down, str) else None,
            Migration(str(revision), name, up, _ops(fns.get("downgrade")),
                      _raises(fns.get("downgrade"))))


async def _git(repo: Path, *args: str) -> str:
    res = await run_argv(["git", "-C", str(repo), *args], timeout=GIT_TIMEOUT)
    return res.output


async def read_chain(repo: Path, commit: str, good: str, current: str
                     ) -> tuple[tuple[Migration, ...], str | None]:
    """The migrations from `good` (excluded) up to `current`, oldest first, as committed in
    `commit`; or () and why they could not be read."""
    names = [p for p in (await _git(repo, "ls-tree", "-r", "--name-only", commit)).splitlines()
             if _is_migration(p)]
    by_rev: dict[str, tuple[str | None, Migration]] = {}
    for path in names:
        try:
            rev, down, m = parse(await _git(repo, "show", f"{commit}:{path}"),
                                 Path(path).name)
        except SyntaxError as exc:
            return (), f"migration {path} cannot be parsed (line {exc.lineno})"
        if rev is not None:
            by_rev[rev] = (down, m)
    chain: list[Migration] = []
    at: str | None = current
    while at != good:
        if at is None or at not in by_rev or len(chain) >= MOST_MIGRATIONS:
            return (), (f"the migrations from {good} to {current} are not all in "
                        f"{commit[:12]} (no script for {at or 'the base'})")
        down, m = by_rev[at]
        chain.append(m)
        at = down
    return tuple(reversed(chain)), None


async def gather(repo: Path, commit: str, good: str, current: str,
                 database: Any) -> SchemaFacts:
    """The migrations between the two revisions and the rows their breaking operations put
    at stake (tables renamed, dropped or given a NOT NULL column). Never raises."""
    try:
        chain, why = await read_chain(repo, commit, good, current)
    except Exception as exc:  # the decision falls back to its default, never crashes
        chain, why = (), f"the migrations could not be read: {type(exc).__name__}"
    if why is not None:
        return SchemaFacts(good, current, unreadable=why)
    tables = sorted({op.new_name if op.kind is OpKind.RENAME_TABLE and op.new_name else op.table
                     for m in chain for op in m.upgrade
                     if op.kind in DROPS | RENAMES or op.kind is OpKind.ADD_COLUMN})
    counted: Mapping[str, tuple[int | None, str | None]] = {}
    if tables and isinstance(database, CountsRows):
        try:
            counted = await database.count_rows(tables)
        except Exception as exc:  # uncounted: judged as rows at stake
            log.warning("schema status=rows-uncounted reason=%r", f"{type(exc).__name__}")
    return SchemaFacts(good, current, chain, {t: n for t, (n, _) in counted.items()},
                       {t: w for t, (_, w) in counted.items() if w})
