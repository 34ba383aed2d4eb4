"""Emergency access in a target's own user table and Redis: unlock, emergency admin, lockdown.

Blocking (SQLAlchemy Core, bcrypt, redis): callers run these in a worker thread. Nothing
here logs or returns a password hash, a DSN or a Redis URL; errors say which setting to look at.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from rollbackd.daemon.config import AccountsSettings, TargetConfig
from rollbackd.daemon.refusal import Refused

LOCKED_FOREVER = datetime(9999, 12, 31)
"""locked_until of a lockdown: until a person unlocks the account."""
PASSWORD_BYTES = 24  # token_urlsafe: 32 characters, 192 bits


def utcnow() -> datetime:
    # Naive UTC, like the sample app's TIMESTAMP WITHOUT TIME ZONE columns.
    return datetime.now(UTC).replace(tzinfo=None)


def _database_url(target: str, a: AccountsSettings, t: TargetConfig) -> str:
    where = f"targets.{target}.accounts"
    if a.dsn_file is not None:
        return _normalise(a.dsn_file.value, f"{where}.dsn_file ({a.dsn_file.source})")
    path = a.path
    db = t.database
    if path is None and db is not None:
        dsn = getattr(db, "dsn_file", None)
        if dsn is not None:
            return _normalise(dsn.value, f"targets.{target}.database.dsn_file ({dsn.source})")
        path = getattr(db, "path", None)
        where = f"targets.{target}.database"
    if path is None:
        raise Refused("not_configured", f"{where}: name the app's database (path = the "
                           "SQLite file, or dsn_file = a secret file holding its URL)")
    if not path.is_file():  # sqlite would quietly create an empty database
        raise Refused("not_found", f"{where}.path: no database file at {path}")
    return f"sqlite:///{path}"


def _normalise(url: str, where: str) -> str:
    url = url.strip()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise Refused("not_configured", f"{where}: expected a postgresql:// or sqlite:/// URL")


@dataclass(frozen=True)
class Accounts:
    target: str
    settings: AccountsSettings
    url: str = field(repr=False)

    @classmethod
    def of(cls, target: str, t: TargetConfig) -> Accounts:
        if t.accounts is None:
            raise Refused("not_configured", f"targets.{target}.accounts is not configured: "
                               "emergency access needs the app's user table")
        return cls(target, t.accounts, _database_url(target, t.accounts, t))

    # -- plumbing ------------------------------------------------------------------------------

    def _engine(self) -> sa.Engine:
        args: dict[str, Any] = {"timeout": 15} if self.url.startswith("sqlite") else \
            {"connect_timeout": 10}
        # hide_parameters: an error message never carries a hash or an email's row values.
        return sa.create_engine(self.url, poolclass=NullPool, hide_parameters=True,
                                connect_args=args)

    def _table(self) -> sa.TableClause:
        s = self.settings
        return sa.table(
            s.table, sa.column(s.email_column, sa.String), sa.column(s.password_column, sa.String),
            sa.column(s.admin_column, sa.Boolean), sa.column(s.locked_column, sa.DateTime),
            sa.column(s.failed_column, sa.Integer), sa.column(s.expires_column, sa.DateTime))

    def _run(self, work: Any, needs: tuple[str, ...]) -> Any:
        engine = self._engine()
        try:
            with engine.begin() as conn:
                self._check_columns(conn, needs)
                return work(conn, self._table())
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
            raise Refused("database_failed", f"{self.target} accounts database: "
                               f"{type(exc).__name__}: {first}") from None
        finally:
            engine.dispose()

    def _check_columns(self, conn: sa.Connection, needs: tuple[str, ...]) -> None:
        s = self.settings
        try:
            have = {c["name"] for c in sa.inspect(conn).get_columns(s.table)}
        except sa.exc.NoSuchTableError:
            raise Refused("not_supported", f"{self.target}: no table {s.table!r} "
                               f"(targets.{self.target}.accounts.table)") from None
        for setting in needs:
            column = getattr(s, setting)
            if column not in have:
                raise Refused("not_supported", f"{self.target}: table {s.table} has no "
                                   f"column {column!r} (targets.{self.target}.accounts.{setting})")

    # -- the procedures ------------------------------------------------------------------------

    def unlock_admin(self, email: str) -> dict[str, Any]:
        s = self.settings

        def work(conn: sa.Connection, t: sa.TableClause) -> dict[str, Any]:
            c = t.c
            by_email = c[s.email_column] == email
            row = conn.execute(sa.select(c[s.admin_column], c[s.locked_column],
                                         c[s.failed_column]).where(by_email)).one_or_none()
            if row is None:
                raise Refused("not_found", f"no account {email!r} in {s.table}")
            if not row[0]:
                raise Refused("not_admin", f"{email} is not an admin: unlock-admin unlocks "
                                   "admin accounts only (an ordinary lockout ends by itself)")
            conn.execute(sa.update(t).where(by_email).values(
                {s.locked_column: None, s.failed_column: 0}))
            return {"email": email, "was_locked_until": row[1], "failed_attempts": row[2]}

        result: dict[str, Any] = self._run(work, ("email_column", "admin_column",
                                                  "locked_column", "failed_column"))
        return result

    def emergency_admin(self) -> tuple[str, str, datetime, bool]:
        """(email, one-time password, expiry, created); the password exists only in the reply."""
        s = self.settings
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=12)).decode()
        expires = utcnow() + timedelta(seconds=s.emergency_ttl)
        values = {s.password_column: hashed, s.admin_column: True, s.locked_column: None,
                  s.failed_column: 0, s.expires_column: expires}

        def work(conn: sa.Connection, t: sa.TableClause) -> bool:
            c = t.c
            by_email = c[s.email_column] == s.emergency_email
            if conn.execute(sa.select(c[s.email_column]).where(by_email)).first() is None:
                conn.execute(sa.insert(t).values({s.email_column: s.emergency_email, **values}))
                return True
            conn.execute(sa.update(t).where(by_email).values(values))  # a new password, new expiry
            return False

        created = self._run(work, ("email_column", "password_column", "admin_column",
                                   "locked_column", "failed_column", "expires_column"))
        return s.emergency_email, password, expires, bool(created)

    def count_others(self) -> int:
        s = self.settings

        def work(conn: sa.Connection, t: sa.TableClause) -> int:
            query = sa.select(sa.func.count()).select_from(t)
            return int(conn.execute(query.where(t.c[s.email_column] != s.emergency_email))
                       .scalar_one())

        return int(self._run(work, ("email_column",)))

    def lock_all_but_emergency(self) -> int:
        s = self.settings

        def work(conn: sa.Connection, t: sa.TableClause) -> int:
            res = conn.execute(sa.update(t)
                               .where(t.c[s.email_column] != s.emergency_email)
                               .values({s.locked_column: LOCKED_FOREVER}))
            return int(res.rowcount)

        return int(self._run(work, ("email_column", "locked_column")))

    def still_open(self) -> list[str]:
        """Accounts other than the emergency one that could still log in (at most 5 named)."""
        s = self.settings

        def work(conn: sa.Connection, t: sa.TableClause) -> list[str]:
            c = t.c
            locked = c[s.locked_column]
            rows = conn.execute(sa.select(c[s.email_column]).where(
                c[s.email_column] != s.emergency_email,
                sa.or_(locked.is_(None), locked < LOCKED_FOREVER)).limit(5))
            return [r[0] for r in rows]

        result: list[str] = self._run(work, ("email_column", "locked_column"))
        return result

    # -- Redis: sessions and reset tokens --------------------------------------------------------

    def delete_redis_keys(self, patterns: list[str], delete: bool = True
                          ) -> dict[str, int] | None:
        """Keys deleted per pattern (with `delete` False: only counted); None when no Redis is
        configured."""
        if self.settings.redis_url_file is None:
            return None
        import redis  # lazily: only targets with a Redis pay for the client

        client = redis.Redis.from_url(self.settings.redis_url_file.value, socket_timeout=10,
                                      socket_connect_timeout=5)
        counts: dict[str, int] = {}
        try:
            for pattern in patterns:
                batch: list[Any] = []
                counts[pattern] = 0
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        counts[pattern] += int(client.delete(*batch)) if delete else len(batch)
                        batch = []
                if batch:
                    counts[pattern] += int(client.delete(*batch)) if delete else len(batch)
        except redis.RedisError as exc:
            raise Refused("redis_failed", f"{self.target} Redis "
                               f"({self.settings.redis_url_file.source}): "
                               f"{type(exc).__name__}: {exc}") from None
        finally:
            client.close()
        return counts
