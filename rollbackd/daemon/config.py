"""The one TOML config file, validated once into frozen models; errors name file and key path."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from rollbackd.daemon.alerts.settings import AlertsSettings
from rollbackd.daemon.drills.settings import DrillSettings
from rollbackd.daemon.escalation.settings import Contact, EscalationSettings
from rollbackd.daemon.rollback.data_settings import (
    BackupSettings,
    DatabaseSettings,
    KeySettings,
    RedisSessions,
)
from rollbackd.daemon.rollback.deploy_settings import (
    DEPLOYMENT_KINDS,
    DockerDeployment,
    KubernetesDeployment,
    deployment_discriminator,
)
from rollbackd.daemon.secrets import SecretValue, load_secret
from rollbackd.policies.settings import PolicySettings
from rollbackd.probes.base import PositiveDuration
from rollbackd.probes.registry import PROBE_KINDS


class ConfigError(Exception):
    """The config cannot be used; `errors` holds one line per problem, each with its key path."""

    def __init__(self, path: Path | str, errors: list[str]) -> None:
        self.path = str(path)
        self.errors = errors
        super().__init__("\n".join(f"{self.path}: {e}" for e in errors))


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]
Secret = Annotated[SecretValue, PlainValidator(load_secret, json_schema_input_type=str),
                   PlainSerializer(str)]
Argv = Annotated[list[str], Field(min_length=1)]


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class DaemonSettings(Frozen):
    state_dir: ConfigPath = Path("/var/lib/rollbackd")
    """Journal, reports and backups live here (mode 0700)."""
    socket: ConfigPath = Path("/run/rollbackd/control.sock")
    """The control socket rollbackctl talks to."""
    metrics_address: str = "127.0.0.1:9617"
    """host:port of the Prometheus endpoint; empty turns it off."""
    allowed_uids: list[int] = []
    """Control-socket peers besides root and the daemon's own user."""
    socket_group: str | None = None
    """Group that owns the control socket (mode 0660); unset: the daemon's own group."""
    allowed_groups: list[str] = []
    """Control-socket peers in one of these groups (primary or supplementary) are allowed too."""
    max_control_connections: int = Field(default=64, ge=1, le=10_000)
    """Control-socket clients served at once; more are refused at once (reply `busy`), so idle
    clients cannot use up the descriptors the probes need."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe log lines written (to stderr: the journal under systemd)."""
    test_hooks: bool = False
    """Enables fault-injection commands for the test suite; never in production."""
    journal_dsn_file: Secret | None = None
    """Secret (absolute path or credential name) holding a postgresql:// URL: the journal lives
    there, shared by every instance that names it, each target owned by one at a time."""
    journal: Literal["sqlite", "postgresql"] | None = None
    """"sqlite" (state_dir/journal.sqlite3) or "postgresql"; unset: postgresql with a dsn file."""
    instance: str | None = Field(default=None, min_length=1, max_length=200)
    """This instance's name among those sharing a PostgreSQL journal; unset: hostname:pid."""
    takeover_after: PositiveDuration = 10.0
    """PostgreSQL: the longest a target goes unowned after its owner dies or loses the database."""

    @property
    def journal_backend(self) -> Literal["sqlite", "postgresql"]:
        return self.journal or ("postgresql" if self.journal_dsn_file else "sqlite")

    @field_validator("journal")
    @classmethod
    def _journal_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        has_dsn = info.data.get("journal_dsn_file") is not None
        if v == "postgresql" and not has_dsn:
            raise ValueError("needs daemon.journal_dsn_file (the secret with the database URL)")
        if v == "sqlite" and has_dsn:
            raise ValueError("cannot be combined with daemon.journal_dsn_file")
        return v

    @field_validator("takeover_after")
    @classmethod
    def _takeover_floor(cls, v: float) -> float:
        if v < 2:
            raise ValueError("must be at least 2s (an owner's session is checked several times "
                             "within it)")
        return v

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}", v):
            raise ValueError(f"expected host:port such as '127.0.0.1:9617', got {v!r}")
        return v

    @field_validator("socket_group", "allowed_groups")
    @classmethod
    def _groups_exist(cls, v: str | list[str] | None) -> str | list[str] | None:
        import grp  # checked here so that check-config and the start both name the bad group

        for name in [v] if isinstance(v, str) else v or []:
            try:
                grp.getgrnam(name)
            except KeyError:
                raise ValueError(f"no group named {name!r} on this host (create it, e.g. with "
                                 "systemd-sysusers, or change the setting)") from None
        return v


class SmtpSettings(Frozen):
    host: str = "127.0.0.1"
    """The SMTP server's host name or address."""
    port: int = Field(default=25, ge=1, le=65535)
    """The SMTP server's port (587 with starttls, 465 with tls)."""
    sender: str = Field(default="rollbackd@localhost", alias="from")
    """The From address of every mail."""
    starttls: bool = False
    """Upgrade the connection with STARTTLS (port 587); exclusive with tls."""
    tls: bool = False
    """Implicit TLS (port 465); exclusive with starttls."""
    username: str | None = None
    """SMTP AUTH user name; unset: no authentication."""
    password_file: Secret | None = None
    """Secret: the SMTP AUTH password (needs username)."""
    timeout: PositiveDuration = 10.0
    """How long one SMTP conversation may take; a mail that fails is retried."""
    ca_file: ConfigPath | None = None
    """PEM file of the CA that signed the server's certificate (a private CA), for tls/starttls."""

    @field_validator("tls")
    @classmethod
    def _one_tls_mode(cls, tls: bool, info: ValidationInfo) -> bool:
        # A field validator, not a model one, so this error is reported beside any others.
        if tls and info.data.get("starttls"):
            raise ValueError("cannot be combined with smtp.starttls")
        return tls



class GitDeployment(Frozen):
    kind: Literal["git"] = "git"
    repo: ConfigPath
    """The deployment's git work tree; rollback checks out a commit here, detached."""
    restart: Argv
    """argv that restarts the app (no shell), e.g. ["systemctl", "restart", "grading"]."""
    install: Argv | None = None
    """argv that reinstalls dependencies; run only when a requirements file differs."""
    requirements: list[str] = ["requirements.txt"]
    """Files (relative to repo) whose change between two commits makes a rollback run `install`."""
    command_timeout: PositiveDuration = 120.0
    """How long one command (restart, install, git) may take."""
    local_changes: Literal["hold", "stash"] = "hold"
    """Uncommitted edits or untracked files in the work tree when a rollback checks out:
    "hold" holds the incident naming the files (a person decides); "stash" keeps them in a
    named `git stash` and checks out. Never carried into the known-good checkout."""


# [targets.<name>.deployment], tagged by `kind` (git when left out).
Deployment = Annotated[
    Annotated[GitDeployment, Tag("git")] | Annotated[DockerDeployment, Tag("docker")]
    | Annotated[KubernetesDeployment, Tag("kubernetes")],
    deployment_discriminator(),
]


def _optional(f: Any) -> Any:
    typ = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
    return typ | None


PolicyOverrides = create_model(  # type: ignore[call-overload]
    "PolicyOverrides",
    __config__=ConfigDict(extra="forbid", frozen=True),
    # Same types and bounds as [policy], every key optional: a target names only what differs.
    **{
        name: (_optional(f), Field(None, description=f.description))
        for name, f in PolicySettings.model_fields.items()
    },
)

_probe_models = tuple(kind.settings for kind in PROBE_KINDS.values())
ProbeConfig = (
    _probe_models[0]
    if len(_probe_models) == 1
    # Union[tuple] spreads the tuple; `A | B` cannot be built from a runtime tuple.
    else Annotated[Union[_probe_models], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007
)


SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class AccountsSettings(Frozen):
    """[targets.<name>.accounts]: the app's own user table, for the emergency-access commands."""

    path: ConfigPath | None = None
    """The SQLite database file; unset with no dsn_file: [targets.<name>.database]."""
    dsn_file: Secret | None = None
    """Secret file holding the database URL (postgresql://... or sqlite:///...)."""
    table: SqlName = "users"
    """The app's table of user accounts."""
    email_column: SqlName = "email"
    """Its column of e-mail addresses (the login name)."""
    password_column: SqlName = "password_hash"
    """bcrypt hashes."""
    admin_column: SqlName = "is_admin"
    """Its boolean column that marks an admin."""
    locked_column: SqlName = "locked_until"
    """Its column of the naive UTC time an account is locked until."""
    failed_column: SqlName = "failed_login_attempts"
    """Its count of failed logins since the last good one."""
    expires_column: SqlName = "expires_at"
    """Naive UTC time after which the app refuses the account; the emergency admin needs it."""
    emergency_email: str = Field(default="rollbackd-emergency@localhost",
                                 pattern=r"^[^@\s]+@[^@\s]+$")
    """The address (login name) of the emergency admin account that emergency-admin creates."""
    emergency_ttl: PositiveDuration = 3600.0
    """How long an emergency admin's password works."""
    redis_url_file: Secret | None = None
    """Secret file holding the Redis URL of the app's sessions and reset tokens (lockdown)."""
    session_keys: list[str] = ["session:*"]
    """Redis key patterns (SCAN MATCH) of sessions, deleted by a lockdown."""
    reset_keys: list[str] = ["password_reset:*", "reset:*"]
    """Redis key patterns of password-reset tokens, deleted by a lockdown."""

    @field_validator("dsn_file")
    @classmethod
    def _one_source(cls, v: SecretValue | None, info: ValidationInfo) -> SecretValue | None:
        if v is not None and info.data.get("path") is not None:
            raise ValueError("cannot be combined with accounts.path: name one database")
        return v


class TargetConfig(Frozen):
    deployment: Deployment | None = None
    database: DatabaseSettings | None = None
    key: KeySettings | None = None
    redis: RedisSessions | None = None
    backups: BackupSettings = BackupSettings()
    probes: Annotated[dict[str, ProbeConfig], Field(min_length=1)]  # type: ignore[valid-type]
    policy: PolicyOverrides = PolicyOverrides()  # type: ignore[valid-type]
    accounts: AccountsSettings | None = None
    staging: bool = False
    """A staging target: drills (which break it on purpose) may run on it."""
    drills: DrillSettings | None = None

    @field_validator("drills")
    @classmethod
    def _drills_on_staging(cls, v: DrillSettings | None, info: ValidationInfo
                           ) -> DrillSettings | None:
        if v is not None and not info.data.get("staging"):
            raise ValueError("drills break their target on purpose: they need staging = true "
                             "on the target")
        return v


class Config(Frozen):
    daemon: DaemonSettings = DaemonSettings()
    smtp: SmtpSettings = SmtpSettings()
    contacts: dict[str, Contact] = {}
    escalation: EscalationSettings = EscalationSettings()
    policy: PolicySettings = PolicySettings()
    alerts: AlertsSettings | None = None
    targets: Annotated[dict[str, TargetConfig], Field(min_length=1)]
    source: str = Field(default="", exclude=True)

    def policy_for(self, target: str) -> PolicySettings:
        overrides = self.targets[target].policy.model_dump(exclude_none=True)  # type: ignore[attr-defined]
        return self.policy.model_copy(update=overrides)

    @property
    def journal_path(self) -> Path:
        return self.daemon.state_dir / "journal.sqlite3"


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must not be empty",
    "string_pattern_mismatch": "does not have the expected form",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "literal_error": "must be one of {expected}",
    "union_tag_invalid": "must be one of {expected_tags}",
    "union_tag_not_found": "required key is missing",
}


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, el in enumerate(loc):
        # Tagged unions put the tag into the location; the user never wrote it, so drop it.
        if i == 4 and loc[0] == "targets" and loc[2] == "probes" and el in PROBE_KINDS:
            continue
        if i == 3 and loc[0] == "targets" and loc[2] == "deployment" and el in DEPLOYMENT_KINDS:
            continue
        parts.append(f"[{el}]" if isinstance(el, int) else _toml_key(str(el)))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, quoted when it holds dots or brackets."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _describe(err: dict[str, Any]) -> str:
    template = _MESSAGES.get(err["type"])
    msg = template.format(**err.get("ctx", {})) if template else err["msg"]
    msg = msg.removeprefix("Value error, ")
    shown = repr(err["input"])
    if err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], dict):
        if shown not in msg:
            msg += f" (got {shown})"
    loc = tuple(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc += ("kind",)  # the tag's own key, which pydantic leaves out of the location
    return f"{_key_path(loc)}: {msg}"


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    text = str(exc)
    m = re.match(r"Cannot declare (\(.*\)) twice \(at (line \d+)", text)
    if m:
        parts = ast.literal_eval(m.group(1))
        keys = ".".join(_toml_key(k) for k in parts)
        is_target = len(parts) == 2 and parts[0] == "targets"
        what = "duplicate target" if is_target else "duplicate table"
        return f"{keys}: {what}, declared twice ({m.group(2)})"
    return f"invalid TOML: {text}"


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [_toml_error(exc)]) from None
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(dict(e)) for e in exc.errors()]) from None
    return config.model_copy(update={"source": source})


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["config file is not UTF-8 text"]) from None
    return parse_config(text, str(path), path.resolve().parent)
