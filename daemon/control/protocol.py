"""The control protocol: one JSON line in, one JSON line out, with stable error codes."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 5.0


class Request(TypedDict):
    v: NotRequired[int]
    cmd: str
    args: NotRequired[dict[str, Any]]


class Reply(TypedDict):
    ok: bool
    result: NotRequired[Any]
    error: NotRequired[str]
    code: NotRequired[str]


class CommandError(Exception):
    """A command refused; `code` is stable for scripts, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
