"""The config reference, generated from the config models: every section and key with its type,
default, meaning (the field's docstring) and an example. `python -m rollbackd.daemon.config_reference`
rewrites docs/config-reference.md; tests/config/test_reference.py fails when it is stale."""

from __future__ import annotations

import json
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rollbackd.daemon.config import Config, PolicyOverrides
from rollbackd.daemon.secrets import SecretValue
from rollbackd.probes.base import parse_duration

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "config-reference.md"
EXAMPLES = ROOT / "examples"

# What a table of named sub-tables is keyed by, as the reference writes the placeholder.
_KEY_NAMES = {"contacts": "<role>", "targets": "<name>", "probes": "<probe>",
              "classes": "<class>", "injectors": "<scenario>"}


@dataclass
class Section:
    """One TOML table: its header as written, the model behind it and where examples hold it."""

    header: str
    model: type[BaseModel]
    pattern: tuple[str, ...]
    """The table's path, "*" for any name: how examples are searched for its values."""
    kind: str | None = None
    """The `kind` a variant of a tagged table has ("git" also when `kind` is left out)."""
    array: bool = False
    under: str | None = None
    """The kind of the tagged table this one is nested in (a probe's latency table)."""
    keys: list[tuple[str, FieldInfo]] = field(default_factory=list)


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007
    return tp


def _unannotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return _strip_none(tp)


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The models a field holds directly (one, or the variants of a tagged union)."""
    tp = _unannotated(_strip_none(tp))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [m for a in typing.get_args(tp) for m in _models_in(a)]
        return found if len(found) == len(typing.get_args(tp)) else []
    return []


def _sections(model: type[BaseModel], header: str, pattern: tuple[str, ...]) -> Iterator[Section]:
    own = Section(header, model, pattern)
    children: list[Section] = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        key = info.alias or name
        tp = _unannotated(info.annotation)
        origin = typing.get_origin(tp)
        inner = typing.get_args(tp)[-1] if origin in (dict, list, tuple) else None
        sub = f"{header}.{key}" if header else key
        if model is not PolicyOverrides and _models_in(tp):
            variants = _models_in(tp)
            for m in variants:
                kind = _kind_of(m) if len(variants) > 1 else None
                children.extend(_variant(m, sub, (*pattern, key), kind))
        elif origin is dict and inner is not None and _models_in(inner):
            placeholder = _KEY_NAMES.get(key, "<name>")
            variants = _models_in(inner)
            for m in variants:
                kind = _kind_of(m) if len(variants) > 1 else None
                children.extend(_variant(m, f"{sub}.{placeholder}", (*pattern, key, "*"), kind))
        elif origin in (list, tuple) and inner is not None and _models_in(inner):
            for child in _sections(_models_in(inner)[0], sub, (*pattern, key)):
                child.array = child.array or child.header == sub
                children.append(child)
        else:
            own.keys.append((key, info))
    if own.keys or not children:
        yield own
    yield from children


def _variant(model: type[BaseModel], header: str, pattern: tuple[str, ...],
             kind: str | None) -> Iterator[Section]:
    for s in _sections(model, header, pattern):
        if s.header == header:
            s.kind = kind
        elif kind is not None:
            s.under = kind
        yield s


def _kind_of(model: type[BaseModel]) -> str | None:
    info = model.model_fields.get("kind")
    if info is None:
        return None
    args = typing.get_args(_unannotated(info.annotation))
    return str(args[0]) if args else None


def sections() -> list[Section]:
    return list(_sections(Config, "", ()))


# -- types, defaults and values as a TOML user reads them ---------------------------------------

def _is_duration(metadata: list[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in metadata)


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for cls, sign, attr in ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"),
                                (Lt, "<", "lt")):
            if isinstance(m, cls):
                value = getattr(m, attr)
                parts.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        if isinstance(m, MinLen) and m.min_length == 1:
            parts.append("not empty")
    return f" ({', '.join(parts)})" if parts else ""


def type_name(tp: Any, metadata: list[Any] | None = None) -> str:
    metadata = list(metadata or [])
    tp = _strip_none(tp)
    while typing.get_origin(tp) is typing.Annotated:
        tp, *more = typing.get_args(tp)
        metadata += more
        tp = _strip_none(tp)
    origin = typing.get_origin(tp)
    if _is_duration(metadata):
        return "duration" + _bounds(metadata)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "list of " + type_name(typing.get_args(tp)[0]) + _bounds(metadata)
    if origin is dict:
        return "table of " + type_name(typing.get_args(tp)[1])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "table"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(json.dumps(m.value) for m in tp)
    names = {bool: "boolean", int: "integer", float: "number", str: "string",
             Path: "path (relative to the config file)", SecretValue: "secret (file path or "
             "systemd credential name)"}
    return names.get(tp, "value") + _bounds(metadata)


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def toml_value(value: Any, duration: bool = False) -> str:
    if duration and isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(_seconds(float(value)))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v, duration) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v, duration)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def default_of(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel) or value in ((), []) or value == {}:
        return "(see its keys)" if isinstance(value, BaseModel) else "empty"
    return f"`{toml_value(value, _is_duration(info.metadata))}`"


# -- examples: values the example configs set --------------------------------------------------

def _tables(data: Any, pattern: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if not pattern:
        items = data if isinstance(data, list) else [data]
        yield from (i for i in items if isinstance(i, dict))
        return
    if isinstance(data, list):
        for item in data:
            yield from _tables(item, pattern)
        return
    if not isinstance(data, dict):
        return
    head, rest = pattern[0], pattern[1:]
    for key, value in data.items():
        if head in ("*", key):
            yield from _tables(value, rest)


def _example_value(section: Section, key: str, examples: list[dict[str, Any]]) -> Any:
    for data in examples:
        for table in _tables(data, section.pattern):
            if section.kind is not None and table.get("kind", "git") != section.kind:
                continue
            if key in table and not isinstance(table[key], dict):
                return table[key]
    return None


def _placeholder(tp: Any, metadata: list[Any] | None = None) -> str:
    """A value of the right type for a key that no example sets and that has no default."""
    metadata = list(metadata or [])
    tp = _strip_none(tp)
    while typing.get_origin(tp) is typing.Annotated:
        tp, *more = typing.get_args(tp)
        metadata += more
        tp = _strip_none(tp)
    origin = typing.get_origin(tp)
    if _is_duration(metadata):
        return '"30s"'
    if origin is Literal:
        return json.dumps(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return _placeholder(typing.get_args(tp)[0])
    if origin in (list, tuple):
        return f"[{_placeholder(typing.get_args(tp)[0])}]"
    if origin is dict:
        return '{ name = "..." }'
    if isinstance(tp, type) and issubclass(tp, Enum):
        return json.dumps(next(iter(tp)).value)
    low = next((getattr(m, a) for m in metadata for a in ("ge", "gt") if hasattr(m, a)), 1)
    return {bool: "true", int: str(low), float: "1.0", Path: '"/path/to/it"',
            SecretValue: '"credential-name"'}.get(tp, '"..."')


def _example_line(section: Section, key: str, info: FieldInfo,
                  examples: list[dict[str, Any]]) -> str:
    found = _example_value(section, key, examples)
    duration = _is_duration(info.metadata)
    if found is not None:
        return f"{key} = {toml_value(found)}"
    if info.default is not PydanticUndefined and info.default is not None:
        return f"{key} = {toml_value(info.get_default(call_default_factory=True), duration)}"
    return f"# {key} = {_placeholder(info.annotation, info.metadata)}"


# -- the document --------------------------------------------------------------------------------

def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _header(section: Section) -> str:
    return f"[[{section.header}]]" if section.array else f"[{section.header}]"


def _title(section: Section) -> str:
    if section.kind is not None:
        return f'{_header(section)} kind = "{section.kind}"'
    if section.under is not None:
        return f"{_header(section)} of {section.under}"
    return _header(section)


def _meaning(key: str, info: FieldInfo) -> str | None:
    if key == "kind" and not info.description:
        return "Which kind of table this is."
    return info.description


def _render(section: Section, examples: list[dict[str, Any]]) -> list[str]:
    header = _header(section)
    lines = [f"### `{_title(section)}`", ""]
    if section.model.__doc__ and section.model.__doc__ != BaseModel.__doc__:
        lines += [_cell(section.model.__doc__), ""]
    if section.model is PolicyOverrides:
        return [*lines, "Any key of [`[policy]`](#policy), each optional: a target names only "
                "what differs from the global policy.", ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, info in section.keys:
        lines.append(f"| `{key}` | {_cell(type_name(info.annotation, info.metadata))} | "
                     f"{_cell(default_of(info))} | {_cell(_meaning(key, info))} |")
    example = [_example_line(section, key, info, examples) for key, info in section.keys]
    return [*lines, "", "```toml", header, *example, "```", ""]


def reference_markdown(examples: list[dict[str, Any]]) -> str:
    out = ["# Configuration reference", "",
           "Generated from the config models by `python -m rollbackd.daemon.config_reference`; do not edit "
           "by hand. One TOML file, checked with `rollbackd check-config FILE`; "
           "`rollbackd config-schema` prints the same as a JSON Schema. Durations are seconds "
           'or strings such as `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"1d"`. Relative paths '
           "are relative to the config file. A secret is the path of a file holding it, or the "
           "name of a systemd credential (`LoadCredential=`). Examples show values from "
           "[`examples/`](../examples/) where one sets the key, else the default; a commented "
           "example has neither.", ""]
    all_sections = sections()
    out += ["Sections:", ""]
    out += [f"- [`{_title(s)}`](#{_anchor(s)})" for s in all_sections]
    out.append("")
    for s in all_sections:
        out += _render(s, examples)
    return "\n".join(out).rstrip() + "\n"


def _anchor(section: Section) -> str:
    """GitHub's anchor of the section's heading: lower case, punctuation dropped, spaces to -."""
    keep = "".join(c for c in _title(section).lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def load_examples(directory: Path = EXAMPLES) -> list[dict[str, Any]]:
    return [tomllib.loads(p.read_text()) for p in sorted(directory.glob("*/rollbackd.toml"))]


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True)
    # Excluded fields (the file name the config was read from) are set by the loader, not written.
    for name, info in Config.model_fields.items():
        if info.exclude:
            schema["properties"].pop(name, None)
    return schema


def main() -> int:
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(reference_markdown(load_examples()))
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
