"""parse_duration: the one parser behind every interval, timeout and policy duration."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rollbackd.probes.base import parse_duration

UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

quick = settings(database=None, max_examples=300, deadline=None)

number = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.tuples(st.integers(0, 10**4), st.integers(0, 10**6)).map(lambda t: f"{t[0]}.{t[1]}"),
)
unit = st.sampled_from(list(UNITS)).flatmap(
    lambda u: st.sampled_from([u, u.upper(), u.capitalize()])
)
part = st.tuples(number, unit)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@quick
@given(
    parts=st.lists(part, min_size=1, max_size=8),
    trailing=st.one_of(st.none(), number),
    pad=st.sampled_from(["", " ", "\t", "  \n"]),
)
@example(parts=[("1", "h"), ("30", "m")], trailing=None, pad="")
@example(parts=[("250", "ms")], trailing=None, pad="")
@example(parts=[("1", "m"), ("5", "ms")], trailing=None, pad="")
@example(parts=[("1", "d"), ("1", "h"), ("1", "m"), ("1", "s"), ("1", "ms")], trailing=None, pad="")
@example(parts=[("5", "s"), ("1", "h")], trailing="30", pad="")
def test_duration_is_the_sum_of_its_parts(
    parts: list[tuple[str, str]], trailing: str | None, pad: str
) -> None:
    text = "".join(n + u for n, u in parts) + (trailing or "")
    expected = sum(float(n) * UNITS[u.lower()] for n, u in parts) + float(trailing or 0)
    assert close(parse_duration(pad + text + pad), expected)


@quick
@given(st.floats(min_value=0, max_value=1e12, allow_nan=False) | st.integers(0, 10**12))
def test_numbers_are_seconds(value: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == float(value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30.0), ("1.5", 1.5), ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0),
     ("1h", 3600.0), ("1d", 86400.0), ("1h30m", 5400.0), ("1H30M", 5400.0), ("0.5h", 1800.0),
     ("1m30", 90.0), (" 2s ", 2.0), ("5.", 5.0), (".5s", 0.5)],
)
def test_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


BAD = ["5 parsecs", "abc", "5x", "s", "ms", "h1", "1hh", "5mm", "-5s", "+5s", "1e3s", "1h 30m",
       "5 s", "1,5s", "5sec", "10min", "inf", "nan", "1w", "5µs"]


@pytest.mark.parametrize("text", BAD)
def test_bad_strings_raise_with_the_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@quick
@given(
    st.text(alphabet="0123456789dhmsDHMS xyz-+,_/:µé\t", min_size=1, max_size=20).filter(
        lambda s: any(c not in "0123456789dhms" for c in s.strip().lower())
    )
)
def test_any_string_with_a_foreign_character_is_rejected_with_the_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@quick
@given(st.text(alphabet="0123456789dhmsDHMS", min_size=1, max_size=20))
def test_any_digit_unit_string_parses_or_names_the_value(text: str) -> None:
    try:
        result = parse_duration(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert result >= 0


@pytest.mark.parametrize("value", ["", "   ", "\n", None, [], {}, object()])
def test_blank_and_non_string_values_raise(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize("text", ["1.2.3s", ".s", "1..5m", "²s"])
def test_malformed_numbers_raise_with_the_value(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
