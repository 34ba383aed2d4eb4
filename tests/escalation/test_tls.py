"""SMTP over STARTTLS and implicit TLS with a self-signed certificate, and AUTH from a file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollbackd.daemon.escalation.smtp import InsecureAuth, deliver
from rollbackd.daemon.journal.store import Journal
from tests.escalation.conftest import (
    FAR_FUTURE,
    SMTP_PASSWORD,
    SMTP_USER,
    CertFiles,
    MailServer,
    Mode,
    incident,
    make_config,
    outbox_for,
)
from tests.notices import notice


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(SMTP_PASSWORD + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(params=["starttls", "tls"])
def tls_server(request: pytest.FixtureRequest, cert: CertFiles) -> Iterator[MailServer]:
    server = MailServer(request.param, cert).start()
    yield server
    server.stop()


def smtp_extra(mode: Mode, password_file: Path, ca_file: Path | None,
               user: str = SMTP_USER) -> str:
    lines = [f"{mode} = true", f'username = "{user}"', f'password_file = "{password_file}"']
    if ca_file:
        lines.append(f'ca_file = "{ca_file}"')
    return "\n".join(lines)


async def test_tls_with_a_private_ca_and_auth_delivers(
    journal: Journal, tls_server: MailServer, cert: CertFiles, password_file: Path
) -> None:
    outbox = outbox_for(journal, tls_server.port,
                        smtp_extra=smtp_extra(tls_server.mode, password_file, cert.cert))
    inc = incident(journal)
    outbox.send(notice(inc, "opened", "[rollbackd] web: app_down", "health fails\n"))
    outbox.send(notice(inc, "resolved", "[rollbackd] web: resolved", "healthy again\n"))
    assert await outbox.flush() == 2
    assert [d.user for d in tls_server.deliveries] == [SMTP_USER, SMTP_USER]
    assert [str(d.msg["Subject"]) for d in tls_server.deliveries] == [
        "[rollbackd] web: app_down", "[rollbackd] web: resolved"]
    assert all(SMTP_PASSWORD.encode() not in d.raw for d in tls_server.deliveries)


async def test_without_the_ca_file_the_certificate_is_refused_and_mail_waits(
    journal: Journal, tls_server: MailServer, password_file: Path
) -> None:
    outbox = outbox_for(journal, tls_server.port,
                        smtp_extra=smtp_extra(tls_server.mode, password_file, None))
    outbox.send(notice(incident(journal), "opened", "s", "b\n"))
    assert await outbox.flush(now=FAR_FUTURE) == 0
    row = journal.db.execute("SELECT * FROM outbox").fetchone()
    assert row["sent_at"] is None and "CERTIFICATE_VERIFY_FAILED" in row["last_error"]
    assert tls_server.deliveries == []  # and nothing went out in clear text instead


async def test_a_wrong_password_keeps_mail_queued_and_is_not_recorded(
    tmp_path: Path, journal: Journal, cert: CertFiles
) -> None:
    server = MailServer("starttls", cert).start()
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-Password-4711")
        outbox = outbox_for(journal, server.port, smtp_extra=smtp_extra("starttls", wrong,
                                                                        cert.cert))
        outbox.send(notice(incident(journal), "opened", "s", "b\n"))
        assert await outbox.flush() == 0
        row = journal.db.execute("SELECT * FROM outbox").fetchone()
        assert "SMTPAuthenticationError" in row["last_error"]
        assert "not-the-Password-4711" not in row["last_error"]
        assert server.deliveries == []
    finally:
        server.stop()


def test_the_password_never_goes_out_in_clear_text(password_file: Path) -> None:
    # A non-loopback host without TLS: refused before any connection is made.
    cfg = make_config(25, smtp_extra=f'username = "u"\npassword_file = "{password_file}"')
    settings = cfg.smtp.model_copy(update={"host": "smtp.example.com"})
    with pytest.raises(InsecureAuth, match="without TLS"):
        deliver(settings, None, ["a@b"])  # type: ignore[arg-type]
