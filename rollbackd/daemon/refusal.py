"""A refusal: what was asked must not happen now. `code` is stable for scripts; the message is
for people. The control socket answers it as an error reply; nothing else is logged as a crash."""

from __future__ import annotations


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
