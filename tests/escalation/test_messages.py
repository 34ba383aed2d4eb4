"""Mail content: the HTML alternative escapes everything; threads; no secret survives."""

from __future__ import annotations

import html
from pathlib import Path

from rollbackd.daemon.escalation.messages import build_message, to_html
from rollbackd.daemon.escalation.redact import MASK, redact, redact_data, remember
from rollbackd.daemon.journal.store import Journal
from rollbackd.daemon.secrets import SecretValue
from tests.escalation.conftest import (
    FAR_FUTURE,
    SMTP_PASSWORD,
    MailServer,
    incident,
    outbox_for,
)
from tests.notices import notice

NASTY = ('health failed: <script>alert("x")</script> & <b>bold</b> \'quoted\'\n\n'
         "Run `rollbackctl approve 3 <now>` to act.\n\n"
         "    rollbackctl deny 3 && rm -rf </tmp>\n")


def test_html_alternative_escapes_everything() -> None:
    page = to_html("<i>subject</i> & co", NASTY)
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&amp; &lt;b&gt;bold&lt;/b&gt; &#x27;quoted&#x27;" in page
    assert "<title>&lt;i&gt;subject&lt;/i&gt; &amp; co</title>" in page
    # Backticks become code, with their content still escaped; indented lines a code block.
    assert "<code>rollbackctl approve 3 &lt;now&gt;</code>" in page
    assert "<pre><code>rollbackctl deny 3 &amp;&amp; rm -rf &lt;/tmp&gt;</code></pre>" in page
    # Nothing of the text is lost: unescaping the page's text gives every line back.
    assert html.unescape("rollbackctl deny 3 &amp;&amp; rm -rf &lt;/tmp&gt;") in NASTY


def test_message_is_plain_text_with_an_html_alternative_and_threads() -> None:
    import datetime as dt

    msg = build_message("rollbackd@localhost", ["a@x.org", "b@x.org"], "[rollbackd] <x>", NASTY,
                        "<rollbackd.3.resolved@h>", "<rollbackd.3.opened@h>",
                        dt.datetime(2024, 5, 1, 3, 0, tzinfo=dt.UTC))
    assert msg.get_content_type() == "multipart/alternative"
    plain, rich = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content() == NASTY  # type: ignore[attr-defined]
    assert rich.get_content_type() == "text/html"
    assert "&lt;script&gt;" in rich.get_content()  # type: ignore[attr-defined]
    assert msg["In-Reply-To"] == msg["References"] == "<rollbackd.3.opened@h>"
    assert msg["Date"] == "Wed, 01 May 2024 03:00:00 +0000"
    assert msg["Auto-Submitted"] == "auto-generated"
    root = build_message("r@l", ["a@x.org"], "s", "b", "<rollbackd.3.opened@h>",
                         "<rollbackd.3.opened@h>", dt.datetime.now(dt.UTC))
    assert root["In-Reply-To"] is None and root["References"] is None


def test_redact_known_secrets_and_secret_shapes() -> None:
    dsn = "postgresql://grading:dsn-Pa55-7f3e@127.0.0.1:5432/grading"
    fernet = "q5yQ2KPqvS6xkZ6WUkK0m7Rk0m3d4xE6yGv3rQnqH1s="
    text = (f"connect to {dsn} failed; key {fernet}; password=hunter22 token: abc123 "
            f"and the smtp secret {SMTP_PASSWORD}; http://127.0.0.1:5000/health stays")
    out = redact(text, frozenset({SMTP_PASSWORD}))
    for secret in ("dsn-Pa55-7f3e", fernet, "hunter22", "abc123", SMTP_PASSWORD):
        assert secret not in out
    assert "postgresql://grading:***@127.0.0.1:5432/grading" in out
    assert MASK in out
    assert "http://127.0.0.1:5000/health stays" in out
    assert redact_data({"a": [text, 3, None]})["a"][1:] == [3, None]


async def test_outbox_scrubs_config_secrets_from_queued_mail(
    tmp_path: Path, journal: Journal, mail_server: MailServer
) -> None:
    """A secret of the loaded config that slips into a mail is masked before it is journaled."""
    secret_file = tmp_path / "smtp-password"
    secret_file.write_text(SMTP_PASSWORD + "\n")
    # The password is configured (so known), but no username: this server takes mail without
    # AUTH, the test is about content.
    outbox = outbox_for(journal, mail_server.port, smtp_extra=f'password_file = "{secret_file}"')
    # Any secret value a config holds is learnt, a DSN's password on its own too.
    remember(SecretValue("/run/credentials/dsn", "postgresql://app:dsn-Secret-41x@127.0.0.1/app"))
    inc = incident(journal)
    outbox.send(notice(inc, "opened", f"[rollbackd] pw {SMTP_PASSWORD}",
                   f"oops: {SMTP_PASSWORD} and dsn-Secret-41x\n"))
    mail_server.start()
    assert await outbox.flush(now=FAR_FUTURE) == 1
    raw = mail_server.deliveries[0].raw.decode()
    assert SMTP_PASSWORD not in raw and "dsn-Secret-41x" not in raw
    assert MASK in str(mail_server.deliveries[0].msg["Subject"])
    stored = " ".join(str(v) for r in journal.db.execute("SELECT * FROM outbox") for v in r)
    assert SMTP_PASSWORD not in stored and "dsn-Secret-41x" not in stored
