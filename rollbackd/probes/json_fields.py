"""Fields of a JSON answer: reading one by its dotted path, comparing it, quoting it short.

Shared by the kinds that judge JSON answers (http_health, journey); not a kind itself.
"""

from __future__ import annotations

import json

MISSING = object()


def json_field(doc: object, path: str) -> object:
    """The value at a dotted path ("checks.db.status", "items.0.id"), or MISSING."""
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return MISSING
    return doc


def json_equal(got: object, want: object) -> bool:
    """JSON equality: true is not 1, but 1 is 1.0."""
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(json_equal(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(json_equal(a, b) for a, b in zip(got, want, strict=True))
    if isinstance(got, int | float) and isinstance(want, int | float):
        return got == want
    return type(got) is type(want) and got == want


def short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not MISSING else "missing"
    return text if len(text) <= limit else text[: limit - 3] + "..."
