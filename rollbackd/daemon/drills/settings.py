"""[targets.<name>.drills]: when drills run, how each scenario's fault is injected, the limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rollbackd.daemon.drills.cron import parse_cron
from rollbackd.probes.base import PositiveDuration

SCENARIO_NAMES = ("app_down", "auth_broken", "data_corruption", "perf_degraded", "key_invalid")
ScenarioName = Literal["app_down", "auth_broken", "data_corruption", "perf_degraded", "key_invalid"]

QUARTERLY = "0 3 1 */3 *"
"""03:00 on the first day of every third month: the runbook's quarterly drill."""

BuiltinName = Literal[
    "sampleapp_wont_start",   # app_down: a commit of the sample app that exits at start-up
    "sampleapp_slow",         # perf_degraded: a commit of the sample app whose /health is slow
    "docker_image",           # app_down / perf_degraded: the container replaced by `image`
    "alembic_bad_migration",  # auth_broken: a migration that renames the password column
    "sqlite_corrupt_page",    # data_corruption: a b-tree page of `table` overwritten in place
    "sqlite_drop_table",      # data_corruption: `table` dropped
    "fernet_replace_key",     # key_invalid: a fresh key in place of the good one, then restart
]
BUILTIN_SCENARIOS: dict[str, tuple[str, ...]] = {
    "sampleapp_wont_start": ("app_down",),
    "sampleapp_slow": ("perf_degraded",),
    "docker_image": ("app_down", "perf_degraded"),
    "alembic_bad_migration": ("auth_broken",),
    "sqlite_corrupt_page": ("data_corruption",),
    "sqlite_drop_table": ("data_corruption",),
    "fernet_replace_key": ("key_invalid",),
}


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    # The same rule as rollbackd.daemon.config's paths (repeated: rollbackd.daemon.config imports this module).
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
Argv = Annotated[list[str], Field(min_length=1)]
SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class InjectorSettings(_Frozen):
    """How one scenario's fault is put in: an argv of your own (no shell), or a built-in."""

    argv: Argv | None = None
    """Run as it is (no shell) with ROLLBACKD_DRILL_TARGET, _SCENARIO and _ID in its
    environment; exit 0 means the fault is in place."""
    builtin: BuiltinName | None = None
    """A fault rollbackd knows how to put in (see the list of built-ins in docs/drills.md)."""
    cwd: ConfigPath | None = None
    """Working directory of argv."""
    cleanup: Argv | None = None
    """argv run once a drill has passed (e.g. put a branch back); never after a failed drill,
    whose state stays as it is for a person."""
    timeout: PositiveDuration = 120.0
    """How long the injection (argv, or the built-in's restart) may take."""
    table: SqlName | None = None
    """sqlite_corrupt_page: the table or index whose page is damaged (default: the first
    index, else the first table); sqlite_drop_table: the table (required)."""
    column: SqlName = "password_hash"
    """alembic_bad_migration: the column the migration renames ..."""
    users_table: SqlName = "users"
    """... in this table."""
    upgrade: Argv | None = None
    """alembic_bad_migration: argv that applies it (default: this Python's `-m alembic upgrade
    head`), run in [database].cwd with [database].env_file."""
    delay: PositiveDuration = 0.6
    """sampleapp_slow: seconds the slow version's /health takes."""
    image: str | None = None
    """docker_image: the image (a tag or an id) deployed into the target's container."""
    restart: bool = True
    """fernet_replace_key: run [key].restart afterwards, so the app reads the wrong key."""

    @model_validator(mode="after")
    def _one_way(self) -> InjectorSettings:
        if (self.argv is None) == (self.builtin is None):
            raise ValueError("give either argv (your own injector, no shell) or builtin")
        if self.builtin == "docker_image" and not self.image:
            raise ValueError("builtin docker_image needs image")
        if self.builtin == "sqlite_drop_table" and not self.table:
            raise ValueError("builtin sqlite_drop_table needs table")
        return self


def _cron_ok(value: str) -> str:
    parse_cron(value, "UTC")  # raises ValueError with the reason
    return value


class DrillSettings(_Frozen):
    """Drills of one staging target: the schedule and an injector per scenario."""

    schedule: Annotated[str, AfterValidator(_cron_ok)] = QUARTERLY
    """Cron syntax (minute hour day-of-month month day-of-week), in `timezone`."""
    timezone: str = "UTC"
    """The IANA time zone `schedule` is read in, e.g. "Europe/Berlin"."""
    scheduled: bool = True
    """false: drills run only when asked (`rollbackctl drill`); overdue is still reported."""
    scenarios: list[ScenarioName] = []
    """What a scheduled drill (or `rollbackctl drill TARGET` without --scenario) runs;
    empty: every scenario that has an injector, in the order of SCENARIO_NAMES."""
    injectors: dict[ScenarioName, InjectorSettings] = {}
    timeout: PositiveDuration = 300.0
    """Per scenario: from the injection until the daemon has verified the target healthy."""
    grace: PositiveDuration = 3600.0
    """How long after a scheduled time a drill may still pass before it counts as overdue."""
    approve: bool = True
    """The drill approves a plan waiting for approval (a destructive step) itself, as the
    on-call person would; false: it waits for `rollbackctl approve` within `timeout`."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. 'UTC', 'Europe/Berlin')") from None
        return v

    @model_validator(mode="after")
    def _injected(self) -> DrillSettings:
        missing = [s for s in self.scenarios if s not in self.injectors]
        if missing:
            raise ValueError(f"scenarios {', '.join(missing)} have no injector: add "
                             f"[...drills.injectors.{missing[0]}]")
        for scenario, inj in self.injectors.items():
            if inj.builtin and scenario not in BUILTIN_SCENARIOS[inj.builtin]:
                fits = " or ".join(BUILTIN_SCENARIOS[inj.builtin])
                raise ValueError(f"injectors.{scenario}: builtin {inj.builtin} injects {fits}, "
                                 f"not {scenario}")
        return self

    def planned(self) -> list[str]:
        """The scenarios a drill runs when none are named."""
        wanted = self.scenarios or [s for s in SCENARIO_NAMES if s in self.injectors]
        return list(wanted)
