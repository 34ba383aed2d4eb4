"""Request arguments fit for the audit log: the values of secret-looking keys are blanked.

Its own module so that whatever audits a request (the command registry, the cluster refusing a
command for a target it does not own) needs nothing else of the control commands.
"""

from __future__ import annotations

import re
from typing import Any

# Argument names whose values never reach the audit log.
_SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|dsn|credential", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(value: Any) -> Any:
    """A copy of request arguments fit for the audit log: secret-looking keys are blanked."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
