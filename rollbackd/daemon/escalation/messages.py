"""Mail messages: plain text with an escaped HTML alternative, threaded per incident."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime

_CODE = re.compile(r"`([^`\n]+)`")


def _inline(line: str) -> str:
    # Escape first, then mark up: backticks survive escaping and carry no markup of their own.
    return _CODE.sub(r"<code>\1</code>", html.escape(line, quote=True))


def to_html(subject: str, body: str) -> str:
    """The body as HTML: paragraphs, indented lines as code blocks; every character escaped."""
    parts: list[str] = []
    for block in re.split(r"\n\s*\n", body.strip("\n")):
        lines = block.split("\n")
        if all(line.startswith("    ") for line in lines):
            code = "\n".join(html.escape(line[4:], quote=True) for line in lines)
            parts.append(f"<pre><code>{code}</code></pre>")
        else:
            parts.append("<p>" + "<br>\n".join(_inline(line) for line in lines) + "</p>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(subject, quote=True)}</title></head>\n"
        "<body style=\"font-family: sans-serif\">\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def build_message(sender: str, recipients: Sequence[str], subject: str, body: str,
                  message_id: str, root: str | None, date: datetime) -> EmailMessage:
    """One outbox row as a mail. `root` is the incident thread's first message, if another."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    # The queue time, not the send time: a retried mail is the same mail and sorts where it was.
    msg["Date"] = format_datetime(date)
    if root and root != message_id:
        # One thread per incident; every mail answers the first one the incident produced.
        msg["In-Reply-To"] = root
        msg["References"] = root
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: vacation responders stay quiet
    msg.set_content(body)
    msg.add_alternative(to_html(subject, body), subtype="html")
    return msg
