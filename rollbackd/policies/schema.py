"""Schema-aware code rollback: may the known-good code run on the schema the migrations left?

A pure function of the migrations between the known-good revision and the current one (their
operations, read from the scripts) and the row counts the executor gathered. It answers one of:
no downgrade needed (the migrations only added what the old code does not know of), downgrade
first (the old code cannot read the schema, and the downgrade gives back what it needs without
losing anything), or hold (a downgrade cannot give back what the old code needs, or would lose
rows), with the reason and the rows at stake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class OpKind(StrEnum):
    """What one `op.*` call of a migration's upgrade() does to the schema the old code reads."""

    ADD_TABLE = "create_table"
    ADD_COLUMN = "add_column"
    ADD_INDEX = "create_index"
    DROP_INDEX = "drop_index"
    RENAME_TABLE = "rename_table"
    RENAME_COLUMN = "rename_column"  # alter_column(..., new_column_name=...)
    ALTER_COLUMN = "alter_column"  # type or nullability, no rename
    DROP_TABLE = "drop_table"
    DROP_COLUMN = "drop_column"
    OTHER = "other"  # op.execute (raw SQL) and anything else: its effect cannot be read


@dataclass(frozen=True)
class MigrationOp:
    kind: OpKind
    table: str
    column: str | None = None
    new_name: str | None = None
    """The new name of a renamed table or column."""
    nullable: bool = True
    """add_column: whether the new column may be NULL (the old code never fills it)."""
    has_default: bool = False
    """add_column: a server_default fills it for the old code's inserts."""
    text: str = ""
    """How the migration says it, for the reason (never SQL)."""

    @property
    def obj(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table


@dataclass(frozen=True)
class Migration:
    revision: str
    name: str
    """Its script's file name."""
    upgrade: tuple[MigrationOp, ...]
    downgrade: tuple[MigrationOp, ...] = ()
    downgrade_raises: bool = False
    """downgrade() raises (or has no op.* call): the migration says it cannot be undone."""


@dataclass(frozen=True)
class SchemaFacts:
    """What the executor found between the known-good revision and the current one."""

    from_revision: str
    to_revision: str
    migrations: tuple[Migration, ...] = ()
    """Oldest first; empty with `unreadable` set when the chain could not be read."""
    rows: Mapping[str, int | None] = field(default_factory=dict)
    """Rows in each table the breaking operations name (None: could not be counted)."""
    counted_in: Mapping[str, str] = field(default_factory=dict)
    """Where a count was taken when not in the live database (a dropped table's rows are
    counted in the newest backup that still has it), e.g. "backup #3 of 10:45"."""
    unreadable: str | None = None
    """Why the migrations could not be read: then nothing is judged (see judge)."""


class Verdict(StrEnum):
    NO_DOWNGRADE = "no_downgrade"  # expand-only: the old code runs on the new schema
    DOWNGRADE = "downgrade"  # downgrade first, then the code
    HOLD = "hold"  # a person decides: the downgrade cannot give the old code what it reads
    UNKNOWN = "unknown"  # the migrations could not be read: the caller's default applies


@dataclass(frozen=True)
class SchemaJudgement:
    verdict: Verdict
    reason: str
    rows_at_stake: int | None = None
    """HOLD: rows in the dropped or renamed objects (None: could not be counted)."""


EXPAND = frozenset({OpKind.ADD_TABLE, OpKind.ADD_INDEX, OpKind.DROP_INDEX})
RENAMES = frozenset({OpKind.RENAME_TABLE, OpKind.RENAME_COLUMN})
DROPS = frozenset({OpKind.DROP_TABLE, OpKind.DROP_COLUMN})


def _expand_only(op: MigrationOp) -> bool:
    if op.kind is OpKind.ADD_COLUMN:
        # The old code's inserts leave it out: only a nullable or defaulted column takes that.
        return op.nullable or op.has_default
    return op.kind in EXPAND


def _renamed_back(op: MigrationOp, m: Migration) -> bool:
    """The downgrade renames the object back to the name the old code reads."""
    return any(d.kind is op.kind and d.table in (op.table, op.new_name)
               and (d.new_name == (op.column if op.kind is OpKind.RENAME_COLUMN else op.table))
               for d in m.downgrade)


def _rows(facts: SchemaFacts, op: MigrationOp) -> int | None:
    """The rows an operation puts at stake: the table's rows (under its new name if renamed)."""
    table = op.new_name if op.kind is OpKind.RENAME_TABLE and op.new_name else op.table
    return facts.rows.get(table)


def judge(facts: SchemaFacts) -> SchemaJudgement:
    """Whether the known-good code can go back onto the schema, and what must happen first.

    - Every operation only adds (a new table or index, a nullable or defaulted column): the
      old code runs on the new schema as it is; no downgrade, nothing lost.
    - A renamed table or column: the old code cannot read it. The downgrade renames it back,
      which loses nothing, when the migration's downgrade() does that rename.
    - A dropped table or column, or a NOT NULL column without default: the old code reads (or
      must leave out) what is gone. A downgrade can bring back only the structure, so the
      values are lost; with no rows at stake (counted 0) the downgrade loses nothing.
    - Anything unreadable (raw SQL, an unknown call, a downgrade that raises): hold, since
      nothing shows the downgrade loses nothing.
    """
    if facts.unreadable is not None:
        return SchemaJudgement(Verdict.UNKNOWN, facts.unreadable)
    breaking: list[tuple[Migration, MigrationOp]] = [
        (m, op) for m in facts.migrations for op in m.upgrade if not _expand_only(op)]
    if not breaking:
        added = "; ".join(f"{m.name}: {op.text}" for m in facts.migrations for op in m.upgrade)
        return SchemaJudgement(Verdict.NO_DOWNGRADE, (
            f"no downgrade needed: the migrations since {facts.from_revision} only add "
            f"({added or 'no schema operations'}); the old code runs on the new schema"))
    held: list[str] = []
    at_stake: list[int | None] = []
    done: list[str] = []
    for m, op in breaking:
        if m.downgrade_raises:
            held.append(f"{m.name}: {op.text}, and its downgrade() cannot undo it")
            at_stake.append(_rows(facts, op))
        elif op.kind in RENAMES:
            if _renamed_back(op, m):
                done.append(f"{m.name}: {op.text} (renamed back, nothing lost)")
            else:
                held.append(f"{m.name}: {op.text}, and its downgrade() does not rename it back")
                at_stake.append(_rows(facts, op))
        elif op.kind in DROPS or op.kind is OpKind.ADD_COLUMN:
            rows = _rows(facts, op)
            if rows == 0:
                done.append(f"{m.name}: {op.text} (no rows in {op.table}, nothing lost)")
                continue
            what = "its values in" if op.column else "its"
            count = "an uncounted number of" if rows is None else str(rows)
            verb = "dropped" if op.kind in DROPS else "filled by the new code"
            where = facts.counted_in.get(op.table)
            held.append(f"{m.name}: {op.text}; a downgrade brings back the structure only: "
                        f"{what} {count} row(s) {verb} are lost"
                        + (f" (counted in {where})" if where and rows is not None else ""))
            at_stake.append(rows)
        else:
            held.append(f"{m.name}: {op.text} cannot be judged (raw SQL or a change the old "
                        "code may not read)")
            at_stake.append(None if op.kind is OpKind.OTHER else _rows(facts, op))
    if held:
        total = None if any(r is None for r in at_stake) else sum(r or 0 for r in at_stake)
        loss = ("rows at stake: uncounted" if total is None else f"rows at stake: {total}")
        return SchemaJudgement(Verdict.HOLD, (
            f"the known-good code cannot run on the schema {facts.to_revision} and a downgrade "
            f"to {facts.from_revision} would not give it back whole: {'; '.join(held)}; "
            f"{loss}; holding for a person (restore from a backup, or fix forward)"), total)
    return SchemaJudgement(Verdict.DOWNGRADE, (
        f"the known-good code cannot read the schema {facts.to_revision}; downgrading to "
        f"{facts.from_revision} first: {'; '.join(done)}"))
