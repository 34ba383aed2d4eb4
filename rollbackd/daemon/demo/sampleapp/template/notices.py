"""The grading app telling its own users: POST /api/admin/user-notices issues a password-reset
token per user and mails it (after a breach), or mails a data-loss notice (after a key loss).

Enabled by SAMPLEAPP_ADMIN_TOKEN (the bearer token the caller must send). Each call carries an
Idempotency-Key; a key already seen is answered from the record of the first call and tells
nobody again. The record is NOTICE_LOG (SAMPLEAPP_NOTICE_LOG, default notices.jsonl beside the
app), one JSON line per request, so it survives a restart of the app and tests can count calls.
Mail goes to SAMPLEAPP_SMTP (host:port on loopback); without it, only the record is kept.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import smtplib
import threading
from email.message import EmailMessage
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy import Engine, select

# isort: split
from schema import users

RESET_TTL = 3600
EVENTS = ("password_reset", "data_loss")
_LOCK = threading.Lock()


def _log_path() -> str:
    return os.environ.get("SAMPLEAPP_NOTICE_LOG") or "notices.jsonl"


def _seen(key: str) -> dict[str, Any] | None:
    try:
        with open(_log_path(), encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if record.get("key") == key and not record.get("replayed"):
                    return dict(record)
    except FileNotFoundError:
        return None
    return None


def _append(record: dict[str, Any]) -> None:
    with open(_log_path(), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _mail(messages: list[EmailMessage]) -> None:
    where = os.environ.get("SAMPLEAPP_SMTP")
    if not where or not messages:
        return
    host, _, port = where.rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        for msg in messages:
            smtp.send_message(msg)


def register(app: Flask, engine: Engine, tokens: Any) -> None:
    """`tokens.issue(user_id)` stores a reset token and returns it (Redis or memory)."""
    admin = os.environ.get("SAMPLEAPP_ADMIN_TOKEN")
    if not admin:
        return

    @app.post("/api/admin/user-notices")
    def user_notices() -> tuple[Response, int]:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), admin):
            return jsonify(error="not authorized"), 401
        body: Any = request.get_json(silent=True)
        event = body.get("event") if isinstance(body, dict) else None
        key = request.headers.get("Idempotency-Key", "")
        if event not in EVENTS or not key:
            return jsonify(error=f"expected JSON event in {EVENTS} and an Idempotency-Key"), 400
        with _LOCK:  # one call at a time: a repeat waits for the first and is answered by it
            first = _seen(key)
            if first is not None:
                _append({"key": key, "replayed": True})
                return jsonify(event=first["event"], told=first["told"], replayed=True), 200
            with engine.connect() as conn:
                rows = conn.execute(select(users.c.id, users.c.email).order_by(users.c.id)).all()
            messages = []
            for user_id, email in rows:
                msg = EmailMessage()
                msg["From"] = "grading@localhost"
                msg["To"] = email
                if event == "password_reset":
                    token = tokens.issue(user_id)
                    msg["Subject"] = "Reset your grading password"
                    msg.set_content(f"Choose a new password: /reset?token={token}\n")
                else:
                    msg["Subject"] = "Please enter your national ID again"
                    msg.set_content("Some of your data was lost; please enter it again.\n")
                msg["Message-ID"] = f"<grading.{key}.{user_id}@localhost>"
                messages.append(msg)
            _mail(messages)
            _append({"key": key, "event": event, "told": len(rows),
                     "incident": body.get("incident")})
        return jsonify(event=event, told=len(rows), replayed=False), 200


class ResetTokens:
    """Password-reset tokens as `password_reset:<token>` -> user id: in Redis when the app has
    one (what rollbackd's lockdown deletes), else in this process."""

    def __init__(self, redis_url: str | None) -> None:
        self._memory: dict[str, int] = {}
        self._redis: Any = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def issue(self, user_id: int) -> str:
        token = secrets.token_urlsafe(24)
        if self._redis is not None:
            self._redis.set(f"password_reset:{token}", str(user_id), ex=RESET_TTL)
        else:
            self._memory[token] = user_id
        return token
