"""Config models for a target's data: [targets.<name>.database], .key and .backups."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from daemon.secrets import SecretValue, load_secret
from probes.base import PositiveDuration

# daemon.config imports this module, so its small helper types are repeated here, not imported.


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
Secret = Annotated[SecretValue, PlainValidator(load_secret), PlainSerializer(str)]
Argv = Annotated[list[str], Field(min_length=1)]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqliteDatabase(_Frozen):
    kind: Literal["sqlite"]
    path: ConfigPath
    """The live database file; backed up with SQLite's online backup API."""
    stop: Argv | None = None
    """argv that stops the app before a restore swaps the file; restore needs stop and start."""
    start: Argv | None = None
    """argv that starts the app again after a restore."""
    migrate: Argv | None = None
    """argv of a schema downgrade with a "{revision}" placeholder, e.g.
    ["/srv/app/.venv/bin/alembic", "downgrade", "{revision}"]; enables the Alembic downgrade."""
    cwd: ConfigPath | None = None
    """Working directory of `migrate` (the app's directory, which holds alembic.ini)."""
    env_file: ConfigPath | None = None
    """KEY=VALUE lines given to `migrate` as its environment (the app's own env file)."""
    tables: list[Annotated[str, Field(min_length=1)]] = []
    """Tables whose writes since a backup are counted (what a restore would lose); empty: all."""
    timestamp_column: str = Field(default="created_at", pattern=_NAME)
    """Per-row timestamp used to count writes beside rowids; an updated_at column counts updates."""
    alembic_table: str = Field(default="alembic_version", min_length=1)
    command_timeout: PositiveDuration = 120.0

    @field_validator("migrate")
    @classmethod
    def _has_placeholder(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not any("{revision}" in a for a in v):
            raise ValueError('needs a "{revision}" placeholder for the target revision')
        return v

    @model_validator(mode="after")
    def _stop_with_start(self) -> SqliteDatabase:
        if (self.stop is None) != (self.start is None):
            raise ValueError("stop and start go together: a restore stops and starts the app")
        return self


class PostgresDatabase(_Frozen):
    kind: Literal["postgres"]
    path: ConfigPath | None = None
    dsn_file: Secret | None = None


_KINDS = ("sqlite", "postgres")


def _untagged(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Errors name the keys the user wrote: database.path, not database.sqlite.path."""
    try:
        return handler(value)
    except ValidationError as exc:
        errors: list[Any] = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if e["type"] == "union_tag_invalid":
                errors.append({"type": "literal_error", "loc": ("kind",),
                               "input": value.get("kind") if isinstance(value, dict) else value,
                               "ctx": {"expected": " or ".join(map(repr, _KINDS))}})
                continue
            if e["type"] == "union_tag_not_found":
                errors.append({"type": "missing", "loc": ("kind",), "input": value})
                continue
            if loc and loc[0] in _KINDS:
                loc = loc[1:]
            errors.append({"type": e["type"], "loc": loc, "input": e["input"],
                           "ctx": e.get("ctx", {})})
        raise ValidationError.from_exception_data(exc.title, errors) from None


DatabaseSettings = Annotated[
    Annotated[SqliteDatabase | PostgresDatabase, Field(discriminator="kind")],
    WrapValidator(_untagged),
]


class KeySettings(_Frozen):
    file: ConfigPath
    """The file holding the encryption key: a plain key file, or an env file with `env_var`."""
    env_var: str | None = Field(default=None, pattern=_NAME)
    """When set, `file` is an env file and the key is this variable, e.g. DB_ENCRYPTION_KEY."""
    canary: str | None = None
    """A Fernet token made with the good key: a backup counts only if its key decrypts it."""
    canary_file: ConfigPath | None = None
    """A file holding the canary token, instead of `canary`."""
    restart: Argv | None = None
    """argv that restarts the app after a key restore, so it reads the key again."""
    passphrase_file: Secret | None = None
    """Encrypt key backups with this passphrase (scrypt + Fernet); unset: stored as 0600 copies."""
    command_timeout: PositiveDuration = 60.0

    @model_validator(mode="after")
    def _one_canary(self) -> KeySettings:
        if self.canary is not None and self.canary_file is not None:
            raise ValueError("give canary or canary_file, not both")
        return self


class BackupSettings(_Frozen):
    interval: PositiveDuration = 3600.0
    """How often the target's database and key are backed up."""
    keep: PositiveDuration = 7 * 86400.0
    """Backups older than this are removed, but only once a newer verified backup exists."""


REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+,-]*$")
"""What an Alembic revision id may look like before it is put into an argv."""
