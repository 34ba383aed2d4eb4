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
# Where mode 500 strikes unless the fault names its own paths (prefixes, e.g. "/api/projects").
FAULT_500_PATHS = ("/health", "/api/auth/login")
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
        self.paths: tuple[str, ...] = FAULT_500_PATHS

    def set(self, mode: str, delay: float, paths: tuple[str, ...] = FAULT_500_PATHS) -> None:
        with self._cond:
            self.mode, self.delay, self._generation = mode, delay, self._generation + 1
            self.paths = paths
            self._cond.notify_all()

    def strikes(self, path: str) -> bool:
        """Whether mode 500 fails a request for `path`: an exact path or one below it."""
        return self.mode == "500" and any(path == p or path.startswith(p.rstrip("/") + "/")
                                          for p in self.paths)

    def sleep(self) -> None:
        with self._cond:
            if self.mode not in ("slow", "hang"):
                return
            generation = self._generation
            deadline = time.monotonic() + (3600.0 if self.mode == "hang" else self.delay)
            while generation == self._generation and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)


class Workspace:
    """Projects and their grading jobs, in this process's memory: what the user-acceptance
    journey creates, reads back and deletes. Not in the database on purpose: the migrations'
    revision list is what rollbackd's tests and drills know the app by, and a journey's project
    lives a few seconds (a restart forgets it, as a finished journey would have deleted it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self.projects: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}

    def new_id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next - 1


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
    work = Workspace()
    app = Flask(__name__)

    @app.before_request
    def _apply_faults() -> None:
        g.started = time.monotonic()
        if not faults_enabled or request.path == "/_fault":
            return
        if faults.strikes(request.path):
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

    def caller() -> int | None:
        """The user id of the request's bearer token, or None."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        return sessions.lookup(token) if scheme.lower() == "bearer" and token else None

    @app.get("/api/me")
    def me() -> JsonReply:
        user_id = caller()
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

    def owned(kind: dict[int, dict[str, Any]], item_id: int) -> tuple[Any, JsonReply | None]:
        """The caller's item (a project or job), or the reply that refuses it."""
        user_id = caller()
        if user_id is None:
            return None, (jsonify(error="not authenticated"), 401)
        item = kind.get(item_id)
        if item is None or item["owner"] != user_id:  # someone else's is as good as missing
            return None, (jsonify(error="not found"), 404)
        return item, None

    @app.post("/api/projects")
    def create_project() -> JsonReply:
        user_id = caller()
        if user_id is None:
            return jsonify(error="not authenticated"), 401
        body: Any = request.get_json(silent=True)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return jsonify(error="expected JSON object with a non-empty string name"), 400
        project = {"id": work.new_id(), "name": name.strip(), "owner": user_id}
        work.projects[project["id"]] = project
        return jsonify(project), 201

    @app.get("/api/projects/<int:project_id>")
    def read_project(project_id: int) -> JsonReply:
        project, refused = owned(work.projects, project_id)
        if refused is not None:
            return refused
        jobs = sorted(j["id"] for j in work.jobs.values() if j["project_id"] == project_id)
        return jsonify({**project, "jobs": jobs}), 200

    @app.delete("/api/projects/<int:project_id>")
    def delete_project(project_id: int) -> JsonReply:
        project, refused = owned(work.projects, project_id)
        if refused is not None:
            return refused
        for job_id in [j["id"] for j in list(work.jobs.values()) if j["project_id"] == project_id]:
            work.jobs.pop(job_id, None)
        work.projects.pop(project_id, None)
        return jsonify(deleted=project_id), 200

    @app.post("/api/projects/<int:project_id>/jobs")
    def submit_job(project_id: int) -> JsonReply:
        _, refused = owned(work.projects, project_id)
        if refused is not None:
            return refused
        body: Any = request.get_json(silent=True)
        submission = body.get("submission") if isinstance(body, dict) else None
        if not isinstance(submission, str):
            return jsonify(error="expected JSON object with a string submission"), 400
        # Graded at once: a stand-in grader whose score any test can predict.
        job = {"id": work.new_id(), "project_id": project_id, "owner": caller(),
               "status": "graded", "score": min(len(submission), 100)}
        work.jobs[job["id"]] = job
        return jsonify(job), 201

    @app.get("/api/jobs/<int:job_id>")
    def read_job(job_id: int) -> JsonReply:
        job, refused = owned(work.jobs, job_id)
        return refused if refused is not None else (jsonify(job), 200)

    if faults_enabled:

        @app.post("/_fault")
        def set_fault() -> JsonReply:
            body: Any = request.get_json(silent=True)
            mode = body.get("mode") if isinstance(body, dict) else None
            try:
                delay = float(body.get("delay", 1.0 if mode == "slow" else 0.0)) if mode else 0.0
            except (TypeError, ValueError):
                delay = -1.0
            paths = body.get("paths", list(FAULT_500_PATHS)) if isinstance(body, dict) else []
            if mode not in FAULT_MODES or delay < 0:
                return jsonify(error=f"mode must be one of {FAULT_MODES}, delay >= 0"), 400
            if not (isinstance(paths, list) and all(isinstance(p, str) and p.startswith("/")
                                                    for p in paths)):
                return jsonify(error="paths must be a list of paths starting with /"), 400
            faults.set(mode, delay, tuple(paths))
            log.warning("fault injection set: mode=%s delay=%s paths=%s", mode, delay, paths)
            return jsonify(mode=mode, delay=delay, paths=paths), 200

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
