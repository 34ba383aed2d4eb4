"""Reference grading web app that rollbackd deploys, health-checks and rolls back."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from types import FrameType
from typing import Any, NoReturn

import bcrypt
from cryptography.fernet import Fernet
from flask import Flask, Response, g, jsonify, request
from sqlalchemy import select, text, update
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.serving import make_server

# isort: split
# Sibling modules: the app runs from its deployed dir, never as a package.
from schema import make_engine, users, utcnow
from sessions import make_sessions

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
FAULT_MODES = ("none", "500", "401", "hang", "slow")
# Checked against unknown emails so response time does not reveal which accounts exist.
DUMMY_HASH = b"$2b$12$85mpaYojW3o70I66ZakaEuRFjrEz2QOZXxW6JHRzX2fR6Pmippwk."

log = logging.getLogger("sampleapp")
JsonReply = tuple[Response, int]


def die(message: str) -> NoReturn:
    log.error("%s", message)
    sys.exit(2)


class Faults:
    """Process-wide injected fault; the condition wakes sleepers as soon as it changes."""

    def __init__(self) -> None:
        self._cond, self._generation = threading.Condition(), 0
        self.mode, self.delay = "none", 0.0

    def set(self, mode: str, delay: float) -> None:
        with self._cond:
            self.mode, self.delay, self._generation = mode, delay, self._generation + 1
            self._cond.notify_all()

    def sleep(self) -> None:
        with self._cond:
            if self.mode not in ("slow", "hang"):
                return
            generation = self._generation
            deadline = time.monotonic() + (3600.0 if self.mode == "hang" else self.delay)
            while generation == self._generation and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)


def create_app() -> Flask:
    key = os.environ.get("DB_ENCRYPTION_KEY") or die("DB_ENCRYPTION_KEY is required")
    try:
        fernet = Fernet(key.encode())
    except ValueError as exc:
        die(f"DB_ENCRYPTION_KEY is not a valid Fernet key: {exc}")
    engine = make_engine()
    ttl = int(os.environ.get("SAMPLEAPP_SESSION_TTL", "3600"))
    sessions = make_sessions(os.environ.get("REDIS_URL"), ttl)
    faults_enabled = os.environ.get("SAMPLEAPP_FAULTS") == "1"
    version = os.environ.get("SAMPLEAPP_VERSION")
    faults = Faults()
    app = Flask(__name__)

    @app.before_request
    def _apply_faults() -> None:
        g.started = time.monotonic()
        if not faults_enabled or request.path == "/_fault":
            return
        if faults.mode == "500" and request.path in ("/health", "/api/auth/login"):
            raise RuntimeError("injected fault: mode 500")
        faults.sleep()

    @app.after_request
    def _log_request(resp: Response) -> Response:
        ms = (time.monotonic() - g.get("started", time.monotonic())) * 1000
        log.info(
            '%s "%s %s" %d %.1fms',
            request.remote_addr,
            request.method,
            request.path,
            resp.status_code,
            ms,
        )
        return resp

    @app.get("/health")
    def health() -> JsonReply:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError as exc:
            log.error("health check failed: %s", exc)
            return jsonify(status="error", detail=str(exc).splitlines()[0][:500]), 503
        return jsonify(status="ok", version=version, alembic_revision=revision), 200

    @app.post("/api/auth/login")
    def login() -> JsonReply:
        body: Any = request.get_json(silent=True)
        fields = ("email", "password")
        if not (isinstance(body, dict) and all(isinstance(body.get(f), str) for f in fields)):
            return jsonify(error="expected JSON object with string email and password"), 400
        if faults_enabled and faults.mode == "401":
            return jsonify(error="invalid credentials"), 401
        c = users.c
        cols = (c.id, c.password_hash, c.failed_login_attempts, c.locked_until, c.expires_at)
        with engine.connect() as conn:
            user = conn.execute(select(*cols).where(users.c.email == body["email"])).one_or_none()
        if user is None:
            bcrypt.checkpw(body["password"].encode(), DUMMY_HASH)
            return jsonify(error="invalid credentials"), 401
        now = utcnow()
        if user.locked_until is not None and user.locked_until > now:
            until = user.locked_until.isoformat() + "Z"
            return jsonify(error="account locked", locked_until=until), 423
        by_id = update(users).where(users.c.id == user.id)
        if not bcrypt.checkpw(body["password"].encode(), user.password_hash.encode()):
            with engine.begin() as conn:
                # Increment in SQL so concurrent guesses cannot overwrite each other's count.
                conn.execute(by_id.values(failed_login_attempts=users.c.failed_login_attempts + 1))
                attempts = conn.execute(
                    select(c.failed_login_attempts).where(c.id == user.id)
                ).scalar_one()
                if attempts >= MAX_FAILED_LOGINS:
                    conn.execute(by_id.values(failed_login_attempts=0, locked_until=now + LOCKOUT))
            return jsonify(error="invalid credentials"), 401
        if user.expires_at is not None and user.expires_at <= now:
            # Told only to whoever knows the password: a temporary account has run out.
            return jsonify(error="account expired"), 401
        with engine.begin() as conn:
            conn.execute(by_id.values(failed_login_attempts=0, locked_until=None))
        return jsonify(token=sessions.create(user.id)), 200

    @app.get("/api/me")
    def me() -> JsonReply:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        user_id = sessions.lookup(token) if scheme.lower() == "bearer" and token else None
        if user_id is None:
            return jsonify(error="not authenticated"), 401
        cols = (users.c.email, users.c.national_id_encrypted, users.c.is_admin)
        with engine.connect() as conn:
            row = conn.execute(select(*cols).where(users.c.id == user_id)).one_or_none()
        if row is None:
            return jsonify(error="not authenticated"), 401
        # A wrong key after a deploy raises InvalidToken -> 500: exactly what must be noticed.
        secret = row.national_id_encrypted
        nid = fernet.decrypt(secret.encode()).decode() if secret else None
        return jsonify(email=row.email, national_id=nid, is_admin=bool(row.is_admin)), 200

    if faults_enabled:

        @app.post("/_fault")
        def set_fault() -> JsonReply:
            body: Any = request.get_json(silent=True)
            mode = body.get("mode") if isinstance(body, dict) else None
            try:
                delay = float(body.get("delay", 1.0 if mode == "slow" else 0.0)) if mode else 0.0
            except (TypeError, ValueError):
                delay = -1.0
            if mode not in FAULT_MODES or delay < 0:
                return jsonify(error=f"mode must be one of {FAULT_MODES}, delay >= 0"), 400
            faults.set(mode, delay)
            log.warning("fault injection set: mode=%s delay=%s", mode, delay)
            return jsonify(mode=mode, delay=delay), 200

    return app


def loopback_host(host: str) -> str:
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    return host if ok else die(f"refusing SAMPLEAPP_HOST={host!r}: only loopback is allowed")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds serve_forever so the socket is closed cleanly


def main() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # we log requests ourselves
    host = loopback_host(os.environ.get("SAMPLEAPP_HOST", "127.0.0.1"))
    port = os.environ.get("SAMPLEAPP_PORT", "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        die(f"SAMPLEAPP_PORT must be a TCP port number, got {port!r}")
    server = make_server(host, int(port), create_app(), threaded=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    log.info(
        "listening on http://%s:%s version=%s pid=%d",
        host,
        port,
        os.environ.get("SAMPLEAPP_VERSION"),
        os.getpid(),
    )
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        log.info("shutting down")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
