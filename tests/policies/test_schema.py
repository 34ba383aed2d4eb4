"""rollbackd/policies/schema.py: may the known-good code go back onto the schema the migrations left?"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rollbackd.daemon.rollback.schema_facts import parse
from rollbackd.policies.classify import IncidentClass
from rollbackd.policies.decision import Action, decide
from rollbackd.policies.decision import History as DecisionHistory
from rollbackd.policies.ledger import LedgerEntry
from rollbackd.policies.plans import Capability, Component, StepSpec
from rollbackd.policies.schema import Migration, MigrationOp, OpKind, SchemaFacts, Verdict, judge
from rollbackd.policies.settings import PolicySettings
from rollbackd.policies.targets import Facts

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def mig(*up: MigrationOp, down: tuple[MigrationOp, ...] = (), raises: bool = False) -> Migration:
    return Migration("0004", "0004_x.py", up, down, raises)


ADD_NULLABLE = MigrationOp(OpKind.ADD_COLUMN, "users", "nickname", text="add_column")
ADD_NOT_NULL = MigrationOp(OpKind.ADD_COLUMN, "users", "team", nullable=False, text="add")
ADD_NOT_NULL_DEFAULT = MigrationOp(OpKind.ADD_COLUMN, "users", "team", nullable=False,
                                   has_default=True, text="add")
NEW_TABLE = MigrationOp(OpKind.ADD_TABLE, "notes", text="create_table notes")
RENAME = MigrationOp(OpKind.RENAME_COLUMN, "users", "password_hash", "pw_hash", text="rename")
RENAME_BACK = MigrationOp(OpKind.RENAME_COLUMN, "users", "pw_hash", "password_hash", text="back")
RENAME_T = MigrationOp(OpKind.RENAME_TABLE, "grades", None, "marks", text="rename_table")
RENAME_T_BACK = MigrationOp(OpKind.RENAME_TABLE, "marks", None, "grades", text="back")
DROP_COL = MigrationOp(OpKind.DROP_COLUMN, "users", "national_id", text="drop_column")
DROP_TABLE = MigrationOp(OpKind.DROP_TABLE, "grades", text="drop_table grades")
RAW = MigrationOp(OpKind.OTHER, "?", text="execute (raw SQL, not shown)")


@pytest.mark.parametrize(("migrations", "rows", "verdict", "at_stake"), [
    pytest.param((mig(ADD_NULLABLE, NEW_TABLE),), {}, Verdict.NO_DOWNGRADE, None,
                 id="expand-only"),
    pytest.param((mig(ADD_NOT_NULL_DEFAULT),), {}, Verdict.NO_DOWNGRADE, None,
                 id="not-null-with-default-is-expand"),
    pytest.param((mig(RENAME, down=(RENAME_BACK,)),), {"users": 3}, Verdict.DOWNGRADE, None,
                 id="rename-renamed-back"),
    pytest.param((mig(RENAME_T, down=(RENAME_T_BACK,)),), {"marks": 9}, Verdict.DOWNGRADE, None,
                 id="table-rename-renamed-back"),
    pytest.param((mig(RENAME, down=(DROP_COL,)),), {"users": 3}, Verdict.HOLD, 3,
                 id="rename-not-renamed-back"),
    pytest.param((mig(RENAME, raises=True),), {"users": 3}, Verdict.HOLD, 3,
                 id="downgrade-raises"),
    pytest.param((mig(DROP_COL, down=(ADD_NULLABLE,)),), {"users": 5}, Verdict.HOLD, 5,
                 id="drop-column-with-rows"),
    pytest.param((mig(DROP_COL, down=(ADD_NULLABLE,)),), {"users": 0}, Verdict.DOWNGRADE, None,
                 id="drop-column-no-rows"),
    pytest.param((mig(DROP_TABLE, down=(NEW_TABLE,)),), {"grades": None}, Verdict.HOLD, None,
                 id="drop-table-uncounted"),
    pytest.param((mig(ADD_NOT_NULL, down=(DROP_COL,)),), {"users": 2}, Verdict.HOLD, 2,
                 id="not-null-column-filled-since"),
    pytest.param((mig(RAW, down=(RAW,)),), {}, Verdict.HOLD, None, id="raw-sql"),
    pytest.param((mig(ADD_NULLABLE), mig(DROP_COL, down=(ADD_NULLABLE,))), {"users": 1},
                 Verdict.HOLD, 1, id="one-breaking-among-expands"),
])
def test_judge(migrations: tuple[Migration, ...], rows: dict[str, int | None], verdict: Verdict,
               at_stake: int | None) -> None:
    found = judge(SchemaFacts("0003", "0004", migrations, rows))
    assert found.verdict is verdict, found.reason
    assert found.rows_at_stake == at_stake
    if verdict is Verdict.HOLD:
        assert "holding for a person" in found.reason
        assert ("rows at stake: uncounted" if at_stake is None
                else f"rows at stake: {at_stake}") in found.reason


def test_unreadable_is_unknown() -> None:
    found = judge(SchemaFacts("0003", "0004", unreadable="no script for 0004"))
    assert (found.verdict, found.reason) == (Verdict.UNKNOWN, "no script for 0004")


SCRIPT = '''
revision: str = "0004"
down_revision = "0003"

def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.alter_column("password_hash", new_column_name="pw_hash")
    op.add_column("users", sa.Column("nickname", sa.String(40), nullable=True))
    op.drop_table("grades")

def downgrade() -> None:
    raise NotImplementedError("one way")
'''


def test_parse_reads_operations_without_running_anything() -> None:
    rev, down, m = parse(SCRIPT, "0004_x.py")
    assert (rev, down) == ("0004", "0003")
    assert [(o.kind, o.table, o.column, o.new_name) for o in m.upgrade] == [
        (OpKind.RENAME_COLUMN, "users", "password_hash", "pw_hash"),
        (OpKind.ADD_COLUMN, "users", "nickname", None),
        (OpKind.DROP_TABLE, "grades", None, None)]
    assert m.downgrade_raises


# -- the decision: the judgement picks the plan -------------------------------------------------

DOWNGRADE = (StepSpec("alembic_downgrade", idempotent=False),)
CODE = (StepSpec("git_checkout", idempotent=True),)


def facts(schema: SchemaFacts | None) -> Facts:
    ledger = (LedgerEntry("good", T0, T0, T0, alembic_revision="0003"),
              LedgerEntry("bad", T0.replace(hour=1)))
    return Facts(current_version="bad", current_revision="0004", ledger=ledger,
                 capabilities={Capability.DEPLOYMENT_ROLLBACK: CODE,
                               Capability.DATABASE_DOWNGRADE: DOWNGRADE},
                 schema=schema)


@pytest.mark.parametrize(("migration", "action", "steps", "says"), [
    pytest.param(mig(ADD_NULLABLE), Action.EXECUTE, ["git_checkout"], "no downgrade needed",
                 id="expand-only-code-only"),
    pytest.param(mig(RENAME, down=(RENAME_BACK,)), Action.EXECUTE,
                 ["alembic_downgrade", "git_checkout"], "renamed back, nothing lost",
                 id="rename-downgrade-first"),
    pytest.param(mig(DROP_COL, down=(ADD_NULLABLE,)), Action.HOLD, None, "rows at stake: 4",
                 id="drop-held"),
    pytest.param(None, Action.EXECUTE, ["alembic_downgrade", "git_checkout"],
                 "schema downgraded 0004 -> 0003 first", id="not-read-as-before"),
])
def test_decision_follows_the_judgement(migration: Migration | None, action: Action,
                                        steps: list[str] | None, says: str) -> None:
    schema = None if migration is None else SchemaFacts("0003", "0004", (migration,),
                                                        {"users": 4})
    d = decide(IncidentClass.APP_DOWN, "health fails", facts(schema), DecisionHistory(),
               T0.replace(hour=2), PolicySettings())
    assert d.action is action, d.reason
    assert says in d.reason
    if steps is None:
        assert d.plan is None
    else:
        assert d.plan is not None
        body = [s.name for s in d.plan.steps if s.component in (Component.DATABASE,
                                                                 Component.DEPLOYMENT)]
        assert body == steps
