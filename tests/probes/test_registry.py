"""Every probe kind has the one shape: registered by name, frozen documented settings, a check."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Annotated, Any, Union, cast

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from rollbackd.probes.base import ProbeSettings
from rollbackd.probes.registry import PROBE_KINDS, build_probe, probe_class

KINDS = ["http_health", "login", "sqlite_integrity", "fernet_key", "log_errors",
         "backup_freshness"]

MINIMAL: dict[str, dict[str, Any]] = {
    "http_health": {"url": "http://127.0.0.1:1/health"},
    "login": {"url": "http://127.0.0.1:1/login", "email": "a@b.c", "password_file": "/run/pw"},
    "sqlite_integrity": {"path": "/var/lib/app/app.sqlite3"},
    "fernet_key": {"key_file": "/etc/app/fernet.key"},
    "log_errors": {"path": "/var/log/app.log"},
    "backup_freshness": {"journal": "/var/lib/rollbackd/journal.sqlite3", "target": "grading",
                         "max_age": "1d"},
}


def test_every_kind_is_registered_under_its_own_name() -> None:
    assert set(KINDS) <= set(PROBE_KINDS)
    # http_health first: config errors list the kinds in this order.
    assert next(iter(PROBE_KINDS)) == "http_health"
    for name, registered in PROBE_KINDS.items():
        model, cls = registered.settings, probe_class(name)
        assert isinstance(cls, type) and cast(Any, cls).kind == name
        assert model.model_fields["kind"].default == name
        assert issubclass(model, ProbeSettings)
        assert model.model_config.get("frozen") and model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("kind", KINDS)
def test_build_from_minimal_settings(kind: str) -> None:
    model, cls = PROBE_KINDS[kind].settings, probe_class(kind)
    assert isinstance(cls, type)
    settings = model(kind=kind, **MINIMAL[kind])
    probe = build_probe("p", settings)
    assert isinstance(probe, cls) and probe.name == "p"
    assert inspect.iscoroutinefunction(cast(Any, cls).check)


def _documented_fields(model: type[BaseModel]) -> dict[str, bool]:
    """Field name -> whether a docstring line follows it, for the classes between model and base."""
    found: dict[str, bool] = {}
    for klass in model.__mro__:
        if klass in (ProbeSettings, BaseModel) or not issubclass(klass, ProbeSettings):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, after in zip(body, [*body[1:], None], strict=True):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str)
                found.setdefault(stmt.target.id, doc)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_every_setting_has_a_docstring(kind: str) -> None:
    fields = _documented_fields(PROBE_KINDS[kind].settings)
    fields.pop("kind")
    assert fields and [name for name, doc in fields.items() if not doc] == []


def test_kinds_form_a_discriminated_union_as_the_config_needs() -> None:
    models = tuple(k.settings for k in PROBE_KINDS.values())
    union = TypeAdapter(dict[str, Annotated[Union[models], Field(discriminator="kind")]])  # type: ignore[valid-type]  # noqa: UP007
    parsed = union.validate_python({k: {"kind": k, **MINIMAL[k]} for k in KINDS})
    assert [type(v) for v in parsed.values()] == [PROBE_KINDS[k].settings for k in KINDS]
    with pytest.raises(ValidationError) as info:
        union.validate_python({"x": {"kind": "tcp"}})
    assert info.value.errors()[0]["type"] == "union_tag_invalid"

