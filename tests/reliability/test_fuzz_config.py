"""Fuzzing the config loader: hypothesis-made TOML documents (a valid config mutated at random
paths, and free-form documents) and random bytes. Every case loads, or raises ConfigError whose
lines name the file and a key path; never another exception, never a hang, never a secret.

(tests/config/ has the table of known-bad configs and their exact messages; this file throws
what nobody thought of.)
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollbackd.daemon.config import Config, ConfigError, load_config
from rollbackd.daemon.demo.workspace import Workspace

SECRET = "fuzz-Secret-value-4e1d"
FUZZ = settings(max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# -- a TOML writer for any document hypothesis makes (inline tables all the way down) ---------


def toml_string(s: str) -> str:
    # JSON escapes are TOML escapes; DEL is the one control character JSON leaves raw.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


# -- values and documents -------------------------------------------------------------------

SPECIAL_STRINGS = ["", " ", "0", "-1s", "1e999", "nan", "500ms", "1h30m", "0s", "/dev/zero",
                   "/dev/stdin", "/proc/self/mem", "/", "/nonexistent/secret", "relative-name",
                   "../escape", "http://127.0.0.1:1/", "https://[::1]:99999/", "0.0.0.0:80",
                   "127.0.0.1:9617", "git", "docker", "kubernetes", "sqlite", "postgresql",
                   "http_health", "login", "redis", "root", "nogroup", "a\x00b", "ü" * 300,
                   "{revision}", "session:*", "(unclosed", "[", "\\", "\n"]
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    SPECIAL_STRINGS)
scalars = (st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 1, 65536])
           | st.floats() | text | st.datetimes() | st.dates() | st.times())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(text, inner, max_size=4), max_leaves=10)


def base_document(tmp: Path) -> dict[str, Any]:
    """A valid config touching every section: what the mutations start from."""
    secret = tmp / "secret"
    secret.write_text(SECRET + "\n")
    ws = Workspace(tmp / "ws", 18080)  # only its config text is used: nothing is created
    text = ws.config_toml(2525, extra='allowed_uids = [1000]\nlog_level = "debug"')
    doc = tomllib.loads(text)
    doc["smtp"].update(starttls=True, username="u", password_file=str(secret))
    doc["escalation"] = {"ack_timeout": ["10m", "30m"], "storm_max": 5, "digest_delay": "1m"}
    doc["alerts"] = {"listen": "127.0.0.1:9618", "token_file": str(secret)}
    t = doc["targets"]["grading"]
    t["probes"].update(
        login={"kind": "login", "url": "http://127.0.0.1:1/login", "email": "a@b",
               "password_file": str(secret), "max_latency": "1s", "timeout": "2s"},
        redis={"kind": "redis", "port": 6379, "session_pattern": "session:*",
               "min_sessions": 1},
        pg={"kind": "postgres_integrity", "dsn_file": str(secret), "required_tables": ["users"],
            "row_counts": {"users": 0.5}},
        db={"kind": "sqlite_integrity", "path": str(tmp / "db"), "required_tables": ["users"]},
        key={"kind": "fernet_key", "key_file": str(secret), "env_var": "KEY"},
        am={"kind": "alertmanager", "match": {"alertname": "X"}, "symptom": "slow"},
        prom={"kind": "prometheus_query", "url": "http://127.0.0.1:9090", "query": "up",
              "threshold": 1, "comparison": "<"},
        health2={"kind": "http_health", "url": "https://127.0.0.1:1/", "expect_json":
                 {"status": "ok"}, "latency": {"factor": 2, "window": "30s"}},
    )
    t["policy"] = {"max_rollbacks": 1, "auto_destructive": False}
    doc["targets"]["web"] = {
        "deployment": {"kind": "docker", "container": "web", "stop_timeout": "10s"},
        "probes": {"c": {"kind": "docker_container", "container": "web"}}}
    doc["targets"]["api"] = {
        "deployment": {"kind": "kubernetes", "deployment": "api", "namespace": "default"},
        "probes": {"r": {"kind": "k8s_deployment", "deployment": "api"}}}
    return doc


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at] if at else []
    if isinstance(node, dict):
        for k, v in node.items():
            found += paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += paths(v, (*at, i))
    return found


def mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))  # a deep copy
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        where = data.draw(st.sampled_from(paths(doc)), label="path")
        parent: Any = doc
        for part in where[:-1]:
            parent = parent[part]
        key = where[-1]
        op = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]), label="op")
        if op == "replace":
            parent[key] = data.draw(values, label="value")
        elif op == "delete" and isinstance(parent, dict):
            del parent[key]
        elif op == "add" and isinstance(parent.get(key) if isinstance(parent, dict) else None,
                                        dict):
            parent[key][data.draw(text, label="new key")] = data.draw(values, label="new value")
    return doc


# -- the property ------------------------------------------------------------------------------

NO_KEY_PATH = ("invalid TOML", "config file is not UTF-8", "cannot read config file")


def check(path: Path, data: bytes) -> Config | ConfigError:
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert exc.path == str(path)
        assert exc.errors, "a ConfigError without errors"
        assert all(f"{path}: {e}" in str(exc) for e in exc.errors)  # each names the file
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            doc = None
        for error in exc.errors:
            assert isinstance(error, str) and error.strip()
            if doc is None or error.startswith(NO_KEY_PATH):
                continue
            # A key path into the document (or the top level), then what is wrong.
            assert error.startswith("(top level): ") or any(
                error.startswith((k, json.dumps(k))) for k in doc) or error.startswith("targets"), error
        assert SECRET not in str(exc)
        return exc
    assert isinstance(cfg, Config)
    assert SECRET not in repr(cfg) and SECRET not in cfg.model_dump_json()
    return cfg


@FUZZ
@given(data=st.data())
def test_mutated_valid_configs_load_or_name_the_key(tmp_path: Path, data: st.DataObject) -> None:
    doc = base_document(tmp_path)
    check(tmp_path / "rollbackd.toml", toml_document(mutate(doc, data)).encode())


@FUZZ
@given(doc=st.dictionaries(text, values, max_size=6))
def test_free_form_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    (tmp_path / "secret").write_text(SECRET)
    check(tmp_path / "rollbackd.toml", toml_document(doc).encode())


@FUZZ
@given(data=st.binary(max_size=2000) | st.text(max_size=400).map(lambda s: s.encode(
    "utf-8", "surrogatepass")))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    result = check(tmp_path / "rollbackd.toml", data)
    assert isinstance(result, ConfigError) or data.strip() == b"" or b"targets" in data


def test_the_base_document_is_valid(tmp_path: Path) -> None:
    doc = base_document(tmp_path)
    assert isinstance(check(tmp_path / "rollbackd.toml", toml_document(doc).encode()), Config)


@pytest.mark.parametrize("name", ["/dev/zero", "/dev/stdin", "/proc/self/fd/0", "/"])
def test_a_secret_that_is_not_a_small_regular_file_is_an_error_not_a_hang(
        tmp_path: Path, name: str) -> None:
    doc = base_document(tmp_path)
    doc["smtp"]["password_file"] = name
    result = check(tmp_path / "rollbackd.toml", toml_document(doc).encode())
    assert isinstance(result, ConfigError)
    assert any(e.startswith("smtp.password_file: cannot read secret file") for e in result.errors)


def test_a_huge_secret_file_is_refused(tmp_path: Path) -> None:
    doc = base_document(tmp_path)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (1 << 20))
    doc["smtp"]["password_file"] = str(big)
    result = check(tmp_path / "rollbackd.toml", toml_document(doc).encode())
    assert isinstance(result, ConfigError) and "larger than" in str(result)
