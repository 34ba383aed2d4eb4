"""Config validation: a valid file loads, and every bad one names the exact key path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rollbackd.daemon.config import Config, ConfigError, load_config, parse_config
from rollbackd.daemon.secrets import SecretValue, load_secret
from rollbackd.policies.settings import PolicySettings

PROBE = """\
[targets.grading.probes.health]
kind = "http_health"
url = "http://127.0.0.1:8080/health"
"""

SECRET = "s3cr3t-hunter2-value"


def errors_of(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "rollbackd.toml", **kw)  # type: ignore[arg-type]
    assert info.value.path == "rollbackd.toml"
    # The exception text is the same lines, each prefixed with the file.
    assert str(info.value).splitlines() == [f"rollbackd.toml: {e}" for e in info.value.errors]
    return info.value.errors


# --- valid configs ---------------------------------------------------------------------------


def test_minimal_config_is_valid_with_defaults() -> None:
    config = parse_config(PROBE, "mini.toml")
    assert isinstance(config, Config)
    assert config.source == "mini.toml"
    assert list(config.targets) == ["grading"]
    probe = config.targets["grading"].probes["health"]
    assert probe.kind == "http_health"
    assert probe.url == "http://127.0.0.1:8080/health"  # type: ignore[attr-defined]
    assert (probe.interval, probe.timeout, probe.failure_threshold) == (10.0, 5.0, 3)
    assert config.daemon.state_dir == Path("/var/lib/rollbackd")
    assert config.smtp.port == 25 and config.smtp.password_file is None
    assert config.policy == PolicySettings()
    assert config.policy_for("grading") == PolicySettings()


def test_load_config_resolves_relative_paths_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc" / "rollbackd"
    etc.mkdir(parents=True)
    path = etc / "rollbackd.toml"
    path.write_text(
        """\
[daemon]
state_dir = "state"
socket = "/run/rollbackd-test/control.sock"

[targets.grading.deployment]
repo = "../app"
restart = ["systemctl", "restart", "grading"]

[targets.grading.database]
kind = "sqlite"
path = "data/grading.db"
"""
        + PROBE
    )
    # Load through a relative path from elsewhere: the base is the file's own directory.
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/rollbackd/rollbackd.toml"))
    target = config.targets["grading"]
    assert config.daemon.state_dir == etc / "state"
    assert config.daemon.state_dir.is_absolute()
    assert config.journal_path == etc / "state" / "journal.sqlite3"
    assert config.daemon.socket == Path("/run/rollbackd-test/control.sock")  # absolute: kept
    assert target.deployment is not None and target.deployment.repo == etc / "../app"
    assert target.database is not None and target.database.path == etc / "data" / "grading.db"
    assert config.source == "etc/rollbackd/rollbackd.toml"


def test_parse_config_without_base_dir_keeps_relative_paths() -> None:
    config = parse_config('[daemon]\nstate_dir = "state"\n' + PROBE)
    assert config.daemon.state_dir == Path("state")


def test_parse_config_with_base_dir() -> None:
    config = parse_config('[daemon]\nstate_dir = "state"\n' + PROBE, base_dir=Path("/srv/x"))
    assert config.daemon.state_dir == Path("/srv/x/state")


@pytest.mark.parametrize(("line", "seconds"), [
    ("", 86400.0), ('test_restore_every = "6h"', 21600.0), ("test_restore_every = 0", 0.0)])
def test_test_restore_period_is_daily_by_default_and_0_turns_it_off(line: str,
                                                                    seconds: float) -> None:
    cfg = parse_config(PROBE + f"[targets.grading.backups]\n{line}\n", "rollbackd.toml")
    assert cfg.targets["grading"].backups.test_restore_every == seconds


def test_full_workspace_config_is_valid(tmp_path: Path) -> None:
    from rollbackd.daemon.demo.workspace import Workspace

    ws = Workspace(tmp_path, 18080)
    config = parse_config(ws.config_toml(2525), "ws.toml")
    assert config.smtp.port == 2525
    assert set(config.contacts) == {"oncall", "devops"}
    probe = config.targets["grading"].probes["health"]
    assert (probe.interval, probe.timeout) == (0.5, 1.0)
    deployment = config.targets["grading"].deployment
    assert deployment is not None and deployment.command_timeout == 30.0
    assert config.policy_for("grading").verify_timeout == 30.0


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.errors == ["cannot read config file: No such file or directory"]


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n" + PROBE.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["config file is not UTF-8 text"]


# --- one problem, one line, exact key path ---------------------------------------------------

BAD_CONFIGS = [
    pytest.param('[smtp]\nport = "x"\n' + PROBE, "smtp.port: must be an integer", id="wrong-type"),
    pytest.param("[smtp]\nport = 70000\n" + PROBE, "smtp.port: must be at most 65535",
                 id="port-out-of-range"),
    pytest.param('[smtp]\nstarttls = 3\n' + PROBE, "smtp.starttls: must be true or false",
                 id="wrong-type-bool"),
    pytest.param("[daemon]\nbogus = 1\n" + PROBE, "daemon.bogus: unknown key", id="unknown-key"),
    pytest.param("bogus = 1\n" + PROBE, "bogus: unknown key", id="unknown-top-level-key"),
    pytest.param(PROBE + "retries = 2\n", "targets.grading.probes.health.retries: unknown key",
                 id="unknown-probe-key"),
    pytest.param('[targets.grading.probes.health]\nkind = "http_health"\n',
                 "targets.grading.probes.health.url: required key is missing",
                 id="missing-required-key"),
    pytest.param('[targets.grading.probes.health]\nkind = "http_health"\nurl = "ftp://x"\n',
                 "targets.grading.probes.health.url: does not have the expected form",
                 id="bad-url"),
    pytest.param(PROBE + 'interval = "5 parsecs"\n',
                 "targets.grading.probes.health.interval: bad duration '5 parsecs'",
                 id="bad-duration"),
    pytest.param(PROBE + "timeout = true\n",
                 "targets.grading.probes.health.timeout: expected a duration",
                 id="bool-duration"),
    pytest.param(PROBE + "interval = 0\n",
                 "targets.grading.probes.health.interval: must be greater than 0",
                 id="zero-interval"),
    pytest.param(PROBE + 'interval = "0s"\n',
                 "targets.grading.probes.health.interval: must be greater than 0",
                 id="zero-interval-string"),
    pytest.param(PROBE + "interval = -5\n",
                 "targets.grading.probes.health.interval: must be greater than 0",
                 id="negative-interval"),
    pytest.param(PROBE + "failure_threshold = 0\n",
                 "targets.grading.probes.health.failure_threshold: must be at least 1",
                 id="zero-threshold"),
    pytest.param('[smtp]\npassword_file = "/nonexistent/rollbackd/smtp-password"\n' + PROBE,
                 "smtp.password_file: cannot read secret file "
                 "'/nonexistent/rollbackd/smtp-password': No such file or directory",
                 id="secret-file-missing"),
    pytest.param('[smtp]\npassword_file = "/"\n' + PROBE,
                 "smtp.password_file: cannot read secret file '/': Is a directory",
                 id="secret-file-is-directory"),
    pytest.param('[smtp]\npassword_file = ""\n' + PROBE,
                 "smtp.password_file: expected the path of a secret file", id="secret-empty"),
    pytest.param("[smtp]\npassword_file = 5\n" + PROBE,
                 "smtp.password_file: expected the path of a secret file", id="secret-not-str"),
    pytest.param("[targets.grading]\n" + PROBE + "[targets.grading]\n",
                 "targets.grading: duplicate target", id="duplicate-target"),
    pytest.param(PROBE + PROBE, "targets.grading.probes.health: duplicate table",
                 id="duplicate-probe"),
    pytest.param(PROBE + "[targets.grading.policy]\nmax_rollbacks = -1\n",
                 "targets.grading.policy.max_rollbacks: must be at least 0",
                 id="policy-override-below-range"),
    pytest.param(PROBE + '[targets.grading.policy]\ncooldown = "0s"\n',
                 "targets.grading.policy.cooldown: must be greater than 0",
                 id="policy-override-zero-duration"),
    pytest.param(PROBE + "[targets.grading.policy]\nbreaker_failures = 0\n",
                 "targets.grading.policy.breaker_failures: must be at least 1",
                 id="policy-override-breaker"),
    pytest.param(PROBE + '[targets.grading.policy]\nauto_rollback = "sometimes"\n',
                 "targets.grading.policy.auto_rollback: must be true or false",
                 id="policy-override-wrong-type"),
    pytest.param(PROBE + "[targets.grading.policy]\nbogus = 1\n",
                 "targets.grading.policy.bogus: unknown key", id="policy-override-unknown"),
    pytest.param("[policy]\nmax_rollbacks = -1\n" + PROBE,
                 "policy.max_rollbacks: must be at least 0", id="global-policy-out-of-range"),
    pytest.param('[targets.grading.probes.health]\nkind = "tcp"\nurl = "http://x"\n',
                 "targets.grading.probes.health.kind: must be one of 'http_health'",
                 id="unknown-probe-kind"),
    pytest.param("", "targets: required key is missing", id="no-targets"),
    pytest.param("[targets]\n", "targets: must not be empty", id="empty-targets"),
    pytest.param("[targets.grading]\n", "targets.grading.probes: required key is missing",
                 id="target-without-probes"),
    pytest.param("[targets.grading.probes]\n", "targets.grading.probes: must not be empty",
                 id="empty-probes"),
    pytest.param("[smtp]\ntls = true\nstarttls = true\n" + PROBE,
                 "smtp.tls: cannot be combined with smtp.starttls", id="tls-and-starttls"),
    pytest.param("[smtp\nport = 25\n" + PROBE, "invalid TOML: ", id="toml-syntax"),
    pytest.param("[smtp]\nport = 25\nport = 26\n" + PROBE, "invalid TOML: ",
                 id="toml-duplicate-key"),
    pytest.param('[daemon]\nlog_level = "loud"\n' + PROBE, "daemon.log_level: must be one of",
                 id="bad-literal"),
    pytest.param('[daemon]\nmetrics_address = "nope"\n' + PROBE,
                 "daemon.metrics_address: expected host:port", id="bad-metrics-address"),
    pytest.param('[contacts.oncall]\nemails = ["not-an-address"]\n' + PROBE,
                 "contacts.oncall.emails[0]: does not have the expected form", id="bad-email"),
    pytest.param("[contacts.oncall]\nemails = []\n" + PROBE,
                 "contacts.oncall.emails: must not be empty", id="no-emails"),
    pytest.param(PROBE + '[targets.grading.deployment]\nrepo = "app"\nrestart = []\n',
                 "targets.grading.deployment.restart: must not be empty", id="empty-argv"),
    pytest.param(PROBE + '[targets.grading.database]\nkind = "mysql"\n',
                 "targets.grading.database.kind: must be one of", id="bad-database-kind"),
    pytest.param(PROBE + "[targets.grading.backups]\ntest_restore_every = -1\n",
                 "targets.grading.backups.test_restore_every: must be at least 0",
                 id="negative-test-restore-period"),
    pytest.param(PROBE + '[targets.grading.backups]\ntest_restore_every = "weekly"\n',
                 "targets.grading.backups.test_restore_every: bad duration 'weekly'",
                 id="bad-test-restore-period"),
    pytest.param(PROBE + "[targets.grading.backups]\ntest_restore_every = true\n",
                 "targets.grading.backups.test_restore_every: expected a duration",
                 id="bool-test-restore-period"),
    pytest.param(
        '[targets."api.example.com"]\n[targets."api.example.com".probes.health]\n'
        'kind = "http_health"\nurl = "http://127.0.0.1:8080/"\n[targets."api.example.com"]\n',
        'targets."api.example.com": duplicate target',
        id="duplicate-target-with-dotted-name",
    ),
    pytest.param(
        '[targets.probes.probes.http_health]\nkind = "http_health"\n',
        "targets.probes.probes.http_health.url: required key is missing",
        id="probe-named-like-its-kind-in-target-named-probes",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_names_the_key_path(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_unreadable_secret_directory_from_tmp(tmp_path: Path) -> None:
    errors = errors_of(f'[smtp]\npassword_file = "{tmp_path}"\n' + PROBE)
    assert errors == [f"smtp.password_file: cannot read secret file '{tmp_path}': Is a directory"]


def test_unreadable_secret_is_named_with_permission_denied(tmp_path: Path) -> None:
    """A secret the daemon's user may not read; as root, a forked child drops to uid 65534."""
    secret = tmp_path / "pw"
    secret.write_text(SECRET)
    secret.chmod(0o600 if os.geteuid() == 0 else 0)
    tmp_path.chmod(0o755)
    text = f'[smtp]\npassword_file = "{secret}"\n' + PROBE
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.write(write_end, "\n".join(errors_of(text)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        errors = pipe.read().splitlines()
    os.waitpid(pid, 0)
    assert errors == [f"smtp.password_file: cannot read secret file '{secret}': Permission denied"]


def test_secret_file_not_utf8(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe\xfa")
    errors = errors_of(f'[smtp]\npassword_file = "{secret}"\n' + PROBE)
    assert errors == [f"smtp.password_file: secret file '{secret}' is not UTF-8 text"]


# --- secrets: absolute files and systemd credentials ----------------------------------------


def assert_hidden(secret: SecretValue, *containers: object) -> None:
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert str(secret) == f"<secret from {secret.source}>"
    for obj in containers:
        assert SECRET not in repr(obj)
        assert SECRET not in str(obj)


def test_absolute_secret_file_is_read(tmp_path: Path) -> None:
    secret_file = tmp_path / "smtp-password"
    secret_file.write_text(SECRET + "\n")
    config = parse_config(
        f'[smtp]\nusername = "mailer"\npassword_file = "{secret_file}"\n' + PROBE
    )
    secret = config.smtp.password_file
    assert secret is not None
    assert secret.value == SECRET  # the trailing newline is not part of it
    assert secret.source == str(secret_file)
    assert_hidden(secret, config, config.smtp)


def test_credential_name_without_credentials_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    errors = errors_of('[smtp]\npassword_file = "smtp-password"\n' + PROBE)
    assert len(errors) == 1
    assert errors[0].startswith("smtp.password_file: secret 'smtp-password' is a relative name")
    assert "$CREDENTIALS_DIRECTORY is not set" in errors[0]


def test_credential_name_with_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "smtp-password").write_text(SECRET + "\r\n")
    (creds / "grading-dsn").write_text("postgresql://u:" + SECRET + "@127.0.0.1/db")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = parse_config(
        '[smtp]\npassword_file = "smtp-password"\n'
        + PROBE
        + '[targets.grading.database]\nkind = "postgres"\ndsn_file = "grading-dsn"\n',
        base_dir=tmp_path / "elsewhere",  # credentials never resolve against the config dir
    )
    secret = config.smtp.password_file
    assert secret is not None
    assert secret.value == SECRET
    assert secret.source == str(creds / "smtp-password")
    database = config.targets["grading"].database
    assert database is not None and database.dsn_file is not None
    assert database.dsn_file.value.endswith(SECRET + "@127.0.0.1/db")
    assert database.dsn_file.source == str(creds / "grading-dsn")
    assert_hidden(secret, config, config.smtp, database)
    assert_hidden(database.dsn_file)


def test_credential_missing_in_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    errors = errors_of('[smtp]\npassword_file = "smtp-password"\n' + PROBE)
    assert len(errors) == 1
    assert errors[0].startswith(
        f"smtp.password_file: cannot read secret file '{tmp_path / 'smtp-password'}': "
        "No such file or directory"
    )


def test_secret_never_in_errors_of_an_otherwise_bad_config(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET)
    with pytest.raises(ConfigError) as info:
        parse_config(f'[smtp]\nport = "x"\npassword_file = "{secret_file}"\n' + PROBE)
    assert info.value.errors == ["smtp.port: must be an integer (got 'x')"]
    assert SECRET not in str(info.value)


def test_load_secret_passes_secret_values_through() -> None:
    value = SecretValue("/x", SECRET)
    assert load_secret(value) is value
    assert SECRET not in repr(value)


# --- all errors at once ----------------------------------------------------------------------


def test_three_problems_yield_three_lines() -> None:
    errors = errors_of(
        '[daemon]\nbogus = 1\n[smtp]\nport = "x"\n'
        '[targets.grading.probes.health]\nkind = "http_health"\n'
    )
    assert len(errors) == 3, errors
    assert sorted(e.split(":")[0] for e in errors) == [
        "daemon.bogus",
        "smtp.port",
        "targets.grading.probes.health.url",
    ]
    assert "daemon.bogus: unknown key" in errors
    assert "smtp.port: must be an integer (got 'x')" in errors
    assert "targets.grading.probes.health.url: required key is missing" in errors


def test_problems_across_targets_and_policy_are_all_reported() -> None:
    errors = errors_of(
        PROBE
        + 'interval = "soon"\n'
        + "[targets.grading.policy]\nmax_rollbacks = -2\n"
        + '[targets.billing.probes.up]\nkind = "http_health"\nurl = "gopher://x"\n'
        + "timeout = 0\n"
    )
    keys = sorted(e.split(":")[0] for e in errors)
    assert keys == [
        "targets.billing.probes.up.timeout",
        "targets.billing.probes.up.url",
        "targets.grading.policy.max_rollbacks",
        "targets.grading.probes.health.interval",
    ]


def test_tls_conflict_is_reported_together_with_other_errors() -> None:
    errors = errors_of('[daemon]\nbogus = 1\n[smtp]\nport = "x"\ntls = true\nstarttls = true\n'
                       + PROBE)
    assert len(errors) == 3, errors
    assert any(e.startswith("smtp.tls: cannot be combined with smtp.starttls") for e in errors)


# --- policy_for -------------------------------------------------------------------------------


def test_policy_for_merges_policy_with_target_overrides() -> None:
    config = parse_config(
        "[policy]\n"
        'stable_after = "2m"\nmax_rollbacks = 5\ncooldown = "1m"\nverify_timeout = "45s"\n'
        + PROBE
        + "[targets.grading.policy]\n"
        'max_rollbacks = 1\ndry_run = true\ncooldown = "1m30s"\nauto_rollback = false\n'
        '[targets.billing.probes.up]\nkind = "http_health"\nurl = "http://127.0.0.1:9/"\n'
    )
    grading = config.policy_for("grading")
    assert isinstance(grading, PolicySettings)
    # overridden by the target
    assert grading.max_rollbacks == 1
    assert grading.dry_run is True
    assert grading.auto_rollback is False
    assert grading.cooldown == 90.0
    # inherited from [policy]
    assert grading.stable_after == 120.0
    assert grading.verify_timeout == 45.0
    # defaults where neither says anything
    assert grading.window == 3600.0
    assert grading.breaker_failures == 2
    # a target without overrides gets [policy] unchanged
    assert config.policy_for("billing") == config.policy
    # [policy] itself is untouched by the merge
    assert config.policy.max_rollbacks == 5 and config.policy.dry_run is False
    assert config.policy.cooldown == 60.0


def test_policy_override_of_zero_is_kept() -> None:
    # 0 is a legal max_rollbacks and falsy: it must override, not fall back to [policy].
    config = parse_config(
        "[policy]\nmax_rollbacks = 4\n" + PROBE + "[targets.grading.policy]\nmax_rollbacks = 0\n"
    )
    assert config.policy_for("grading").max_rollbacks == 0
