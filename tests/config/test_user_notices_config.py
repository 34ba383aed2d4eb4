"""[targets.<name>.user_notices]: what each way needs, and errors that name the key path."""

from __future__ import annotations

import pytest

from rollbackd.daemon.config import parse_config
from rollbackd.daemon.rollback.notice_settings import DEFAULT_TEMPLATES, NoticeEvent
from tests.config.test_config_errors import PROBE, errors_of

ACCOUNTS = '\n[targets.grading.accounts]\npath = "/srv/grading/grading.db"\n'


def section(body: str, accounts: bool = True) -> str:
    return PROBE + (ACCOUNTS if accounts else "") + f"\n[targets.grading.user_notices]\n{body}\n"


def test_mail_with_defaults() -> None:
    n = parse_config(section('via = "mail"')).targets["grading"].user_notices
    assert n is not None and n.via == "mail" and n.rate == 5.0
    assert n.on == ["password_reset", "data_loss"]
    assert n.templates.of(NoticeEvent.DATA_LOSS) == DEFAULT_TEMPLATES[NoticeEvent.DATA_LOSS]
    assert "re" in n.templates.data_loss.body and "{email}" in n.templates.password_reset.body


@pytest.mark.parametrize(("body", "accounts", "error"), [
    pytest.param('via = "mail"', False,
                 "targets.grading.user_notices: via = \"mail\" reads the users from the app's "
                 "table: it needs [targets.<name>.accounts]", id="mail-without-accounts"),
    pytest.param('via = "endpoint"', True,
                 'targets.grading.user_notices: via = "endpoint" needs user_notices.url',
                 id="endpoint-without-url"),
    pytest.param('via = "command"', True,
                 'targets.grading.user_notices: via = "command" needs user_notices.command',
                 id="command-without-argv"),
    pytest.param('via = "mail"\ncommand = ["/bin/true"]', True,
                 'targets.grading.user_notices: user_notices.command is for via = "command", '
                 'not "mail"', id="argv-on-mail"),
    pytest.param('via = "mail"\nrate = 0', True,
                 "targets.grading.user_notices.rate: must be greater than 0.0",
                 id="zero-rate"),
    pytest.param('via = "smoke-signals"', True,
                 "targets.grading.user_notices.via: must be one of 'endpoint', 'command' or "
                 "'mail' (got 'smoke-signals')", id="unknown-way"),
    pytest.param('via = "mail"\non = ["breach"]', True,
                 "targets.grading.user_notices.on[0]: must be one of 'password_reset' or "
                 "'data_loss' (got 'breach')", id="unknown-event"),
    pytest.param('via = "mail"\n[targets.grading.user_notices.templates.data_loss]\n'
                 'subject = "Hi {name}"\nbody = "x"', True,
                 "targets.grading.user_notices.templates.data_loss.subject: names unknown "
                 "placeholder(s) name; known: {app_url}, {email}, {incident}, {target}",
                 id="unknown-placeholder"),
    pytest.param('via = "mail"\n[targets.grading.user_notices.templates.password_reset]\n'
                 'subject = "x"\nbody = "{email.__class__}"', True,
                 "targets.grading.user_notices.templates.password_reset.body: names unknown "
                 "placeholder(s) email.__class__", id="attribute-in-placeholder"),
    pytest.param('via = "mail"\n[targets.grading.user_notices.templates.password_reset]\n'
                 'subject = "x"\nbody = "a { b"', True,
                 "targets.grading.user_notices.templates.password_reset.body: is not a valid "
                 "template", id="unmatched-brace"),
])
def test_errors_name_the_key(body: str, accounts: bool, error: str) -> None:
    found = errors_of(section(body, accounts))
    assert len(found) == 1 and found[0].startswith(error), found
