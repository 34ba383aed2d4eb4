"""Config model of [targets.<name>.user_notices]: telling the app's users after a breach or a
key loss, through the app (an endpoint or a command) or by rollbackd's own mail."""

from __future__ import annotations

import string
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
    model_validator,
)

from rollbackd.daemon.secrets import SecretValue, load_secret
from rollbackd.probes.base import PositiveDuration

Secret = Annotated[SecretValue, PlainValidator(load_secret, json_schema_input_type=str),
                   PlainSerializer(str)]
Argv = Annotated[list[str], Field(min_length=1)]


class NoticeEvent(StrEnum):
    """Why the users are told: the plan that ends with the notice."""

    PASSWORD_RESET = "password_reset"  # the mass-breach lockdown: every password must change
    DATA_LOSS = "data_loss"  # the key disaster: encrypted fields were cleared, re-enter them


PLACEHOLDERS = frozenset({"email", "target", "incident", "app_url"})
"""What a template may name: {email}, {target}, {incident}, {app_url}."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _known_placeholders(text: str) -> str:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:  # an unmatched brace
        raise ValueError(f"is not a valid template: {exc} (write a literal brace as {{{{ or "
                         "}}}})") from None
    unknown = sorted(n for n in names if n not in PLACEHOLDERS)
    if unknown:
        raise ValueError(f"names unknown placeholder(s) {', '.join(unknown)}; known: "
                         f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))}")
    return text


class Template(_Frozen):
    subject: Annotated[str, Field(min_length=1, max_length=200)]
    """The mail's subject; may name {email}, {target}, {incident}, {app_url}."""
    body: Annotated[str, Field(min_length=1)]
    """The mail's plain-text body; the same placeholders."""

    _checked = field_validator("subject", "body")(_known_placeholders)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("must be one line")
        return v


DEFAULT_TEMPLATES: dict[NoticeEvent, Template] = {
    NoticeEvent.PASSWORD_RESET: Template(
        subject="Please reset your password for {app_url}",
        body=("Hello,\n\nwe found that account credentials of {app_url} may have been exposed. "
              "As a precaution every account was locked and every session ended.\n\n"
              "Please choose a new password with the password reset of {app_url} before you "
              "sign in again, and change it wherever else you used the same one.\n\n"
              "We are sorry for the trouble.\n\n(reference: incident {incident}, {email})\n")),
    NoticeEvent.DATA_LOSS: Template(
        subject="Some of your data at {app_url} must be entered again",
        body=("Hello,\n\nthe key that protected some of the data you stored at {app_url} was "
              "lost, and the data it protected could not be recovered. Your account itself is "
              "unchanged.\n\nPlease sign in and enter the missing details again.\n\n"
              "We are sorry for the trouble.\n\n(reference: incident {incident}, {email})\n")),
}


class Templates(_Frozen):
    password_reset: Template = DEFAULT_TEMPLATES[NoticeEvent.PASSWORD_RESET]
    """The mail after a mass-breach lockdown: every user must reset their password."""
    data_loss: Template = DEFAULT_TEMPLATES[NoticeEvent.DATA_LOSS]
    """The mail after the key disaster: encrypted fields were cleared, please re-enter them."""

    def of(self, event: NoticeEvent) -> Template:
        return self.password_reset if event is NoticeEvent.PASSWORD_RESET else self.data_loss


class UserNoticeSettings(_Frozen):
    """[targets.<name>.user_notices]: the last step of the lockdown and of the key reset."""

    via: Literal["endpoint", "command", "mail"]
    """"endpoint": POST to the app, which issues reset tokens and mails its users itself
    (preferred: the app owns its users); "command": run an argv that does the same; "mail":
    rollbackd mails every user of [targets.<name>.accounts]'s table, throttled, each once."""
    on: list[Literal["password_reset", "data_loss"]] = ["password_reset", "data_loss"]
    """Which plans end with the notice: "password_reset" (the lockdown), "data_loss" (the key
    reset)."""
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """via = "endpoint": the URL POSTed to, with JSON {"event", "incident", "target"} and an
    Idempotency-Key header that is the same for every call of one incident's step."""
    token_file: Secret | None = None
    """via = "endpoint": secret file holding a bearer token sent as Authorization."""
    command: Argv | None = None
    """via = "command": argv run with ROLLBACKD_EVENT, ROLLBACKD_INCIDENT and ROLLBACKD_TARGET
    in its environment; exit 0 means the users were told."""
    rate: float = Field(default=5.0, gt=0, le=1000)
    """via = "mail": mails per second at most (the SMTP server and the receivers' spam limits
    set it)."""
    sender: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    """via = "mail": the From address of user mail; default smtp.from."""
    app_url: str = "the application"
    """What the templates call the app ({app_url}), e.g. "https://grading.example.edu"."""
    templates: Templates = Templates()
    """via = "mail": subject and body per event; defaults say what happened in plain words."""
    timeout: PositiveDuration = 3600.0
    """How long the step may take: the endpoint's or command's answer, or the whole mailing
    (users / rate seconds). A mailing cut off by it stops where it was; approving the incident
    again mails only those left."""

    @model_validator(mode="after")
    def _what_via_needs(self) -> UserNoticeSettings:
        needs = {"endpoint": ("url",), "command": ("command",), "mail": ()}[self.via]
        for key in needs:
            if getattr(self, key) is None:
                raise ValueError(f'via = "{self.via}" needs user_notices.{key}')
        for key, only in (("url", "endpoint"), ("token_file", "endpoint"),
                          ("command", "command")):
            if getattr(self, key) is not None and self.via != only:
                raise ValueError(f'user_notices.{key} is for via = "{only}", not "{self.via}"')
        return self
