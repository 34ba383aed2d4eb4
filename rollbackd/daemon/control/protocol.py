"""The control protocol: one JSON line in, one JSON line out, with stable error codes."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from rollbackd.daemon.refusal import Refused

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 5.0
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a request may have. Far beyond what any command takes,
and far below Python's recursion limit: the audit log's redaction and JSON encoding recurse."""


class Request(TypedDict):
    v: NotRequired[int]
    """Protocol version; a request without one is taken as version 1."""
    cmd: str
    args: NotRequired[dict[str, Any]]


class Reply(TypedDict):
    ok: bool
    result: NotRequired[Any]
    error: NotRequired[str]
    code: NotRequired[str]


class CommandError(Refused):
    """A command refused; `code` is stable for scripts, the message is for people."""


def version_error(req: dict[str, Any]) -> Reply | None:
    """The reply to a request of a protocol version this daemon does not speak, else None."""
    v = req.get("v", PROTOCOL_VERSION)
    if type(v) is int and v == PROTOCOL_VERSION:  # `true` is not version 1
        return None
    return {"ok": False, "code": "bad_version",
            "error": f"protocol version {v!r} is not supported; this rollbackd speaks "
                     f"version {PROTOCOL_VERSION} (upgrade rollbackctl or rollbackd)"}


def nested_deeper(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than `limit` in a parsed request. Iterative, so
    a request of any depth is judged without recursing."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def too_deep() -> Reply:
    return {"ok": False, "code": "bad_request",
            "error": f"request nested deeper than {MAX_DEPTH} levels of arrays and objects"}
