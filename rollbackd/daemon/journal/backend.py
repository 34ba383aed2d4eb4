"""Which journal a config names: the embedded SQLite file, or PostgreSQL shared by instances."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rollbackd.daemon.journal.db import Database
from rollbackd.daemon.journal.store import Journal, Repositories
from rollbackd.daemon.metrics import JournalCollector
from rollbackd.policies.settings import PolicySettings

if TYPE_CHECKING:
    from rollbackd.daemon.config import Config

log = logging.getLogger("rollbackd.metrics")


def journal_dsn(cfg: Config) -> str:
    secret = cfg.daemon.journal_dsn_file
    assert secret is not None, "journal_backend is postgresql only with a dsn file"
    return secret.value


def open_journal(cfg: Config) -> Journal:
    if cfg.daemon.journal_backend == "postgresql":
        from rollbackd.daemon.journal.pg import open_pg_journal  # psycopg: only for this backend

        # The journal is synchronous, like sqlite3: a dead network must not hold the daemon's
        # loop for longer than an owner may go without renewing its lock session.
        fence_ms = int(cfg.daemon.takeover_after * 1000 / 5)
        return open_pg_journal(journal_dsn(cfg), cfg.daemon.state_dir,
                               tcp_user_timeout=fence_ms, connect_timeout=max(2, fence_ms // 1000))
    return Journal(cfg.journal_path)


class PgJournalCollector(JournalCollector):
    """The journal metrics read from PostgreSQL: a read-only session of its own per scrape."""

    def __init__(self, dsn: str, policies: Callable[[], Mapping[str, PolicySettings]]) -> None:
        super().__init__(Path("postgresql"), policies)  # the path is never opened here
        self._dsn = dsn

    def collect(self) -> Iterator[Metric]:
        readable = GaugeMetricFamily("rollbackd_journal_readable",
                                     "1 if every journal metric could be read at this scrape")
        ok = True
        try:
            from rollbackd.daemon.journal.pg import PgConnection

            db = PgConnection(self._dsn, "rollbackd-metrics", connect_timeout=2)
            db.conn.execute("SET default_transaction_read_only = on")
        except Exception as exc:  # noqa: BLE001 - a scrape must never raise
            log.debug("metrics journal=postgresql status=unreadable reason=%s", exc)
            ok = False
        else:
            try:
                metrics, ok = self.sections(Repositories(Database(db)))
                yield from metrics
            finally:
                db.close()
        readable.add_metric([], 1 if ok else 0)
        yield readable


def journal_collector(cfg: Config,
                      policies: Callable[[], Mapping[str, PolicySettings]]) -> Collector:
    if cfg.daemon.journal_backend == "postgresql":
        return PgJournalCollector(journal_dsn(cfg), policies)
    return JournalCollector(cfg.journal_path, policies)
