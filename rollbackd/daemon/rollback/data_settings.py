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

from rollbackd.daemon.secrets import SecretValue, load_secret
from rollbackd.probes.base import Duration, PositiveDuration

# rollbackd.daemon.config imports this module, so its small helper types are repeated here, not imported.


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
Secret = Annotated[SecretValue, PlainValidator(load_secret, json_schema_input_type=str),
                   PlainSerializer(str)]
Argv = Annotated[list[str], Field(min_length=1)]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_COLUMN = r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$"
EncryptedColumns = list[Annotated[str, Field(pattern=_COLUMN)]]
"""table.column names of fields the target's key encrypts: set to NULL, after an approval, by
the key disaster's procedure (no backup of the key is left), so that the app can run with a
fresh key. Empty: the procedure is not offered, the disaster is only escalated."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _migrate_has_placeholder(v: list[str] | None) -> list[str] | None:
    if v is not None and not any("{revision}" in a for a in v):
        raise ValueError('needs a "{revision}" placeholder for the target revision')
    return v


def _stop_and_start_together(db: Any) -> Any:
    if (db.stop is None) != (db.start is None):
        raise ValueError("stop and start go together: a restore stops and starts the app")
    return db


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
    """The table Alembic keeps the schema revision in."""
    encrypted_columns: EncryptedColumns = []
    """table.column fields encrypted with the target's key (see the key disaster procedure)."""
    command_timeout: PositiveDuration = 120.0
    """How long one command (stop, start, migrate, pg_dump) may take."""

    _has_placeholder = field_validator("migrate")(_migrate_has_placeholder)
    _stop_with_start = model_validator(mode="after")(_stop_and_start_together)


class PostgresDatabase(_Frozen):
    kind: Literal["postgres"]
    path: ConfigPath | None = None
    """Unused (accepted for older configs)."""
    dsn_file: Secret | None = None
    """Secret: the libpq connection string (URI or key=value) of the app's database. Given to
    pg_dump/pg_restore as PG* environment variables (PGPASSWORD), never in argv or logs.
    Without it the database is only described, neither backed up nor restored."""
    dbname: str | None = Field(default=None, min_length=1, max_length=40)
    """The database to back up and restore; default: the DSN's dbname."""
    maintenance_db: str = Field(default="postgres", min_length=1)
    """Where renames, CREATE DATABASE and pg_terminate_backend are run from."""
    stop: Argv | None = None
    """argv that stops the app before the swap (optional: the swap terminates its sessions)."""
    start: Argv | None = None
    """argv that starts the app after the swap."""
    migrate: Argv | None = None
    """argv of a schema downgrade with a "{revision}" placeholder; enables the Alembic downgrade."""
    cwd: ConfigPath | None = None
    """Working directory of `migrate` (the app's directory, which holds alembic.ini)."""
    env_file: ConfigPath | None = None
    """KEY=VALUE lines given to `migrate` as its environment (the app's own env file)."""
    jobs: int = Field(default=2, ge=1, le=64)
    """pg_restore -j (and pg_dump -j with the directory format)."""
    dump_format: Literal["custom", "directory"] = "custom"
    """pg_dump -Fc (one file) or -Fd (a directory, dumped with -j jobs)."""
    compress: int = Field(default=0, ge=0, le=9)
    """pg_dump -Z: 0 (none) or 1 where the data does not compress; higher costs CPU."""
    snapshot: bool = False
    """Each backup also clones the database (CREATE DATABASE <db>_snap_<time> TEMPLATE <db>),
    which restores far faster than a dump. Needs no other session on the database for a moment;
    when the app is connected the snapshot is skipped (logged) and only the dump is taken."""
    snapshot_keep: int = Field(default=1, ge=1, le=10)
    """Snapshot databases kept; older ones are dropped after a newer one is made."""
    strategy: Literal["file_copy", "wal_log"] = "file_copy"
    """CREATE DATABASE STRATEGY of a snapshot clone (PostgreSQL 15+)."""
    tables: list[Annotated[str, Field(min_length=1)]] = []
    """Tables whose rows are counted in each backup and must match after a restore; empty: all."""
    encrypted_columns: EncryptedColumns = []
    """table.column fields encrypted with the target's key (see the key disaster procedure)."""
    alembic_table: str = Field(default="alembic_version", min_length=1)
    """The table Alembic keeps the schema revision in."""
    bin_dir: ConfigPath | None = None
    """Directory of pg_dump and pg_restore; default: found on PATH."""
    restore_work_mem: str = Field(default="512MB", pattern=r"^[0-9]+(kB|MB|GB)$")
    """maintenance_work_mem of pg_restore's sessions (index builds of the new database)."""
    restore_tablespace: str | None = Field(default=None, min_length=1, max_length=63)
    """Tablespace the database restored from a dump is created in (CREATE DATABASE ...
    TABLESPACE), to stage the restore on another volume; after the swap the app's database
    stays there. It must exist and its volume must hold the whole database. Default: the
    cluster's default tablespace. Not used when the restore renames a snapshot database."""
    restore_method: Literal["sections", "pg_restore"] = "sections"
    """How a dump is restored into the new database. "sections": pg_restore of the schema, the
    table data COPYed by rollbackd (a large table split over copy_streams connections, a smaller
    one in one TRUNCATE + COPY FREEZE), pg_restore -j of the indexes and constraints, then the
    privileges; each table's exact row count is the server's count of the rows its COPYs
    loaded. "pg_restore": one pg_restore -j run, its tables counted again with count(*)."""
    copy_streams: int = Field(default=2, ge=1, le=16)
    """Concurrent COPYs a large table's rows are split over in a "sections" restore (1: one
    COPY FREEZE per table). More than the server's free cores only adds contention."""
    command_timeout: PositiveDuration = 120.0
    """How long one command (stop, start, migrate, pg_dump) may take."""
    restore_timeout: PositiveDuration = 3600.0
    """How long a whole restore of a dump may take."""

    _has_placeholder = field_validator("migrate")(_migrate_has_placeholder)
    _stop_with_start = model_validator(mode="after")(_stop_and_start_together)


class RedisSessions(_Frozen):
    """[targets.<name>.redis]: the app's sessions and password-reset tokens."""

    url_file: Secret
    """Secret: redis://[user:password@]127.0.0.1:6379/<db> (never logged)."""
    session_keys: list[Annotated[str, Field(min_length=1)]] = ["session:*"]
    """SCAN MATCH patterns of sessions: backed up, and deleted by a session flush."""
    token_keys: list[Annotated[str, Field(min_length=1)]] = ["password_reset:*", "reset:*"]
    """Patterns of password-reset tokens: backed up, never flushed, restorable."""
    flush: Literal["pattern", "database"] = "pattern"
    """"pattern": delete the session keys only; "database": FLUSHDB of the URL's database,
    refused when it holds keys matching none of the patterns."""
    flush_after_restore: bool = False
    """Flush the sessions after every database restore: a session issued against data the
    restore discarded (a user or a role that no longer exists) must not outlive it."""
    scan_count: int = Field(default=500, ge=1, le=100_000)
    """SCAN COUNT: keys Redis looks at per SCAN call."""
    command_timeout: PositiveDuration = 30.0
    """How long one Redis command may take."""


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
    """A file holding the canary token, instead of `canary`. The key disaster procedure writes
    a new canary made with the fresh key here (an inline `canary` cannot be rewritten, so with
    one the procedure is not offered); point the fernet_key probe at the same file."""
    canary_plaintext: str = "rollbackd canary"
    """What a canary written by the key disaster procedure decrypts to (match the probe's)."""
    restart: Argv | None = None
    """argv that restarts the app after a key restore, so it reads the key again."""
    passphrase_file: Secret | None = None
    """Encrypt key backups with this passphrase (scrypt + Fernet); unset: stored as 0600 copies."""
    command_timeout: PositiveDuration = 60.0
    """How long `restart` may take."""

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
    test_restore_every: Annotated[Duration, Field(ge=0)] = 86400.0
    """How often the newest verified PostgreSQL dump is test-restored into a scratch database
    (<db>_restoretest_<id>, dropped after) and checked: tables, row counts, alembic revision.
    A dump that fails is marked unusable. 0 turns it off. SQLite copies need none: each passed
    integrity_check when it was taken."""


REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+,-]*$")
"""What an Alembic revision id may look like before it is put into an argv."""
