"""rollbackd's command line: run, check-config, probe, demo.

Only argparse at the top: `rollbackd --help` must not pay for the daemon (config models,
every probe kind, the HTTP stack); each command imports what it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from rollbackd.daemon.config import Config

EXIT_CONFIG = 2


def _load(path: str) -> Config | None:
    """The config, or None after printing every error (a missing extra is one too)."""
    from rollbackd.daemon.config import ConfigError, load_config
    from rollbackd.daemon.config_check import missing_extras

    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{exc.path}: {line}", file=sys.stderr)
        return None
    missing = missing_extras(config)
    for finding in missing:
        print(f"{path}: {finding}", file=sys.stderr)
    return None if missing else config


def cmd_check_config(ns: argparse.Namespace) -> int:
    from rollbackd.daemon.config_check import config_warnings

    config = _load(ns.file)
    if config is None:
        return EXIT_CONFIG
    warnings = config_warnings(config)
    label = "" if ns.strict else "warning: "
    for finding in warnings:
        print(f"{ns.file}: {label}{finding}", file=sys.stderr)
    if ns.strict and warnings:
        return EXIT_CONFIG
    probes = sum(len(t.probes) for t in config.targets.values())
    noted = f", {len(warnings)} warnings" if warnings else ""
    print(f"{ns.file}: ok ({len(config.targets)} targets, {probes} probes{noted})")
    return 0


async def _probe_all(config: Config, only: str | None) -> int:
    from rollbackd.daemon.monitor import run_probe
    from rollbackd.probes.base import ProbeSettings
    from rollbackd.probes.registry import build_probe

    failed = 0
    for tname, target in config.targets.items():
        if only and tname != only:
            continue
        for pname, settings in target.probes.items():
            settings = cast(ProbeSettings, settings)
            obs = await run_probe(build_probe(pname, settings), settings.timeout)
            failed += not obs.ok
            symptom = f" [{obs.symptom}]" if obs.symptom else ""
            print(f"{tname}/{pname} ({obs.kind}): {obs.status}{symptom} {obs.detail} "
                  f"in {obs.duration * 1000:.0f} ms")
    return 1 if failed else 0


def cmd_probe(ns: argparse.Namespace) -> int:
    import asyncio

    config = _load(ns.config)
    if config is None:
        return EXIT_CONFIG
    if ns.target and ns.target not in config.targets:
        print(f"{ns.config}: no target {ns.target!r} (have: {', '.join(config.targets)})",
              file=sys.stderr)
        return EXIT_CONFIG

    return asyncio.run(_probe_all(config, ns.target))


def cmd_run(ns: argparse.Namespace) -> int:
    config = _load(ns.config)
    if config is None:
        return EXIT_CONFIG
    from rollbackd.daemon.app import Daemon
    from rollbackd.daemon.logs import setup_logging
    from rollbackd.daemon.statelock import StateDirInUse

    setup_logging(config.daemon.log_level)

    try:
        return Daemon(config, Path(ns.config)).run()
    except StateDirInUse as exc:  # the running daemon keeps its socket and its probes
        print(f"rollbackd: {exc}", file=sys.stderr)
        return 1


def cmd_rules(ns: argparse.Namespace) -> int:
    from rollbackd.daemon.alerts.rules import rules_text

    sys.stdout.write(rules_text())
    return 0


def cmd_config_schema(ns: argparse.Namespace) -> int:
    import json

    from rollbackd.daemon.config_reference import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


DEMO_MODULES = ("flask", "sqlalchemy", "alembic", "bcrypt", "aiosmtpd")
"""What the demo's sample app and mail sink import: the demo extra."""


def cmd_demo(ns: argparse.Namespace) -> int:
    from rollbackd.daemon.config_check import module_installed

    missing = [m for m in DEMO_MODULES if not module_installed(m)]
    if missing:
        print(f"rollbackd demo: needs the demo extra ({', '.join(missing)} missing): "
              "pip install 'rollbackd[demo]'", file=sys.stderr)
        return EXIT_CONFIG
    from rollbackd.daemon.demo.main import run_demo

    return run_demo(keep=ns.keep, verbose=ns.verbose)


def cmd_journal_migrate(ns: argparse.Namespace) -> int:
    from rollbackd.daemon.journal.migrate import MigrationError, migrate
    from rollbackd.daemon.secrets import load_secret

    try:
        dsn = load_secret(ns.to_dsn_file).value
        done = migrate(Path(ns.source), dsn)
    except (ValueError, MigrationError, OSError) as exc:
        print(f"rollbackd journal migrate: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # psycopg's: the database refused or cannot be reached
        print(f"rollbackd journal migrate: {type(exc).__name__}: {exc}".rstrip(), file=sys.stderr)
        return 1
    for table, n in done.rows.items():
        print(f"{table:16} {n} rows")
    print(f"migrated {ns.source} to {done.server}: {sum(done.rows.values())} rows, ids kept; "
          f"audit chain verified ({done.audit_rows} rows). Set daemon.journal_dsn_file now.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollbackd", description="Self-healing monitoring daemon.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    run.add_argument("--config", required=True)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a config file: every error and "
                           "warning at once; exit 2 on errors, 0 otherwise")
    check.add_argument("file")
    check.add_argument("--strict", action="store_true", help="warnings count as errors (exit 2)")
    check.set_defaults(func=cmd_check_config)
    schema = sub.add_parser("config-schema", help="print the config file's JSON Schema (for "
                            "editors; docs/config-reference.md is the same for people)")
    schema.set_defaults(func=cmd_config_schema)
    probe = sub.add_parser("probe", help="run every probe once; exit 1 if any fails")
    probe.add_argument("--config", required=True)
    probe.add_argument("target", nargs="?")
    probe.set_defaults(func=cmd_probe)
    rules = sub.add_parser("rules", help="print the Prometheus alerting rules for rollbackd")
    rules.set_defaults(func=cmd_rules)
    demo = sub.add_parser("demo", help="deploy the sample app, break it, watch it roll back")
    demo.add_argument("--keep", action="store_true", help="keep the workspace afterwards")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's log lines")
    demo.set_defaults(func=cmd_demo)
    journal = sub.add_parser("journal", help="journal maintenance").add_subparsers(
        dest="journal_command", required=True, metavar="COMMAND")
    mig = journal.add_parser("migrate", help="copy the SQLite journal into an empty PostgreSQL "
                             "database (every table, ids kept, audit chain verified)")
    mig.add_argument("--from", dest="source", required=True, metavar="SQLITE_FILE")
    mig.add_argument("--to-dsn-file", required=True, metavar="FILE",
                     help="secret file (or credential name) holding the postgresql:// URL")
    mig.set_defaults(func=cmd_journal_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        result: int = ns.func(ns)
        sys.stdout.flush()
    except BrokenPipeError:  # `rollbackd config-schema | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result


if __name__ == "__main__":
    sys.exit(main())
