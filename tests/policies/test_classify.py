"""classify(): a target's debounced probe health -> one incident class, by kind, symptom, precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.policies.classify import (
    IncidentClass,
    TargetHealth,
    all_passing,
    classify,
    probe_account_trouble,
)
from rollbackd.policies.debounce import ProbeHealth, debounce
from rollbackd.probes.observation import Observation, Status, Symptom

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
FAST = settings(max_examples=400, deadline=None, database=None)
S = Symptom
C = IncidentClass

PASSING = ProbeHealth(passing=True, successes=1)


def failing(symptom: Symptom | None) -> ProbeHealth:
    """A probe past its failure threshold."""
    return ProbeHealth(failing=True, failures=3, onset=T0, symptom=symptom)


def below(symptom: Symptom) -> ProbeHealth:
    """A probe that has failed, but fewer times than its threshold: not failing yet."""
    return ProbeHealth(failing=False, failures=2, onset=T0, symptom=symptom)


def fail(kind: str, symptom: Symptom | None) -> tuple[str, ProbeHealth]:
    return kind, failing(symptom)


def ok(kind: str) -> tuple[str, ProbeHealth]:
    return kind, PASSING


# health (probe name -> (kind, health)), expected class or None, the probes that justify it
ROWS = [
    pytest.param({}, None, [], id="no-probes"),
    pytest.param({"health": ok("http_health"), "login": ok("login")}, None, [], id="all-passing"),
    # --- auth_broken: health passes, login fails with 5xx / bad response / two accounts refused
    pytest.param({"health": ok("http_health"), "login": fail("login", S.SERVER_ERROR)},
                 C.AUTH_BROKEN, ["login"], id="login-5xx-health-passing"),
    pytest.param({"health": ok("http_health"), "login": fail("login", S.LOGINS_REFUSED)},
                 C.AUTH_BROKEN, ["login"], id="login-two-accounts-refused"),
    pytest.param({"health": ok("http_health"), "login": fail("login", S.WRONG_CREDENTIALS)},
                 None, [], id="login-401-probe-account-only-is-not-auth-broken"),
    pytest.param({"health": ok("http_health"), "login": fail("login", S.BAD_RESPONSE)},
                 C.AUTH_BROKEN, ["login"], id="login-bad-response"),
    pytest.param({"login": fail("login", S.SERVER_ERROR)}, C.AUTH_BROKEN, ["login"],
                 id="login-5xx-alone"),
    pytest.param({"health": ok("http_health"), "login": fail("login", S.ACCOUNT_LOCKED)},
                 None, [], id="login-locked-is-not-auth-broken"),
    pytest.param({"health": ok("http_health"), "login": fail("login", S.UNREACHABLE)},
                 None, [], id="login-unreachable-is-not-auth-broken"),
    # --- app_down: a dead app also fails login; that is not an auth incident
    pytest.param({"health": fail("http_health", S.SERVER_ERROR),
                  "login": fail("login", S.SERVER_ERROR)},
                 C.APP_DOWN, ["health"], id="login-and-health-5xx-is-app-down"),
    pytest.param({"health": fail("http_health", S.UNREACHABLE),
                  "login": fail("login", S.WRONG_CREDENTIALS)},
                 C.APP_DOWN, ["health"], id="login-failing-health-unreachable"),
    pytest.param({"health": fail("http_health", S.TIMEOUT)}, C.APP_DOWN, ["health"],
                 id="health-timeout"),
    pytest.param({"health": fail("http_health", S.BAD_RESPONSE)}, C.APP_DOWN, ["health"],
                 id="health-bad-response"),
    pytest.param({"c": fail("docker_container", S.CONTAINER_DOWN), "health": ok("http_health")},
                 C.APP_DOWN, ["c"], id="docker-container-down"),
    pytest.param({"pod": fail("k8s_deployment", S.CONTAINER_DOWN)}, C.APP_DOWN, ["pod"],
                 id="k8s-crash-looping"),
    pytest.param({"c": fail("docker_container", S.CONTAINER_DOWN),
                  "login": fail("login", S.SERVER_ERROR)},
                 C.APP_DOWN, ["c"], id="container-down-beats-login"),
    pytest.param({"a": fail("http_health", S.SERVER_ERROR), "b": ok("http_health"),
                  "c": fail("http_health", S.UNREACHABLE)},
                 C.APP_DOWN, ["a", "c"], id="every-failing-health-probe-is-evidence"),
    # --- perf_degraded: slow is not down
    pytest.param({"health": fail("http_health", S.SLOW)}, C.PERF_DEGRADED, ["health"],
                 id="health-slow-is-perf-not-app-down"),
    pytest.param({"health": fail("http_health", S.SLOW), "login": ok("login")},
                 C.PERF_DEGRADED, ["health"], id="health-slow-login-ok"),
    pytest.param({"login": fail("login", S.SLOW), "health": ok("http_health")},
                 C.PERF_DEGRADED, ["login"], id="login-slow"),
    pytest.param({"p99": fail("prometheus_query", S.SLOW)}, C.PERF_DEGRADED, ["p99"],
                 id="prometheus-latency"),
    pytest.param({"pod": fail("k8s_deployment", S.SLOW)}, C.PERF_DEGRADED, ["pod"],
                 id="k8s-slow"),
    pytest.param({"p99": fail("prometheus_query", S.SERVER_ERROR)}, None, [],
                 id="prometheus-non-slow-is-nothing"),
    pytest.param({"health": fail("http_health", S.SLOW), "c": fail("docker_container",
                                                                   S.CONTAINER_DOWN)},
                 C.APP_DOWN, ["c"], id="slow-health-but-container-down"),
    pytest.param({"health": fail("http_health", S.SLOW), "login": fail("login", S.SERVER_ERROR)},
                 C.AUTH_BROKEN, ["login"], id="slow-health-does-not-hide-auth"),
    pytest.param({"health": fail("http_health", S.SLOW), "p99": fail("prometheus_query", S.SLOW),
                  "login": fail("login", S.SLOW)},
                 C.PERF_DEGRADED, ["health", "p99", "login"], id="all-slow-probes-are-evidence"),
    # --- data_corruption: integrity probes with corruption symptoms, above everything
    pytest.param({"db": fail("sqlite_integrity", S.INTEGRITY)}, C.DATA_CORRUPTION, ["db"],
                 id="sqlite-integrity"),
    pytest.param({"db": fail("sqlite_integrity", S.MISSING_TABLE)}, C.DATA_CORRUPTION, ["db"],
                 id="sqlite-missing-table"),
    pytest.param({"db": fail("sqlite_integrity", S.BAD_REVISION)}, C.DATA_CORRUPTION, ["db"],
                 id="alembic-unknown-revision"),
    pytest.param({"db": fail("sqlite_integrity", S.ROWS_COLLAPSED)}, C.DATA_CORRUPTION, ["db"],
                 id="rows-collapsed"),
    pytest.param({"pg": fail("postgres_integrity", S.INTEGRITY)}, C.DATA_CORRUPTION, ["pg"],
                 id="postgres-amcheck"),
    pytest.param({"db": fail("sqlite_integrity", S.INTEGRITY),
                  "health": fail("http_health", S.SERVER_ERROR),
                  "login": fail("login", S.SERVER_ERROR), "k": fail("fernet_key", S.KEY_INVALID),
                  "redis": fail("redis", S.UNREACHABLE)},
                 C.DATA_CORRUPTION, ["db"], id="corruption-beats-everything"),
    pytest.param({"pg": fail("postgres_integrity", S.UNREACHABLE),
                  "db": fail("sqlite_integrity", S.INTEGRITY)},
                 C.DATA_CORRUPTION, ["db"], id="corruption-beats-dependency"),
    pytest.param({"health": fail("http_health", S.INTEGRITY)}, C.APP_DOWN, ["health"],
                 id="integrity-symptom-on-health-probe-is-not-corruption"),
    # --- dependency_down: the database or Redis itself is unreachable
    pytest.param({"pg": fail("postgres_integrity", S.UNREACHABLE)}, C.DEPENDENCY_DOWN, ["pg"],
                 id="postgres-unreachable"),
    pytest.param({"pg": fail("postgres_integrity", S.TIMEOUT)}, C.DEPENDENCY_DOWN, ["pg"],
                 id="postgres-timeout"),
    pytest.param({"pg": fail("postgres_integrity", S.DEPENDENCY_DOWN)}, C.DEPENDENCY_DOWN,
                 ["pg"], id="postgres-dependency-down"),
    pytest.param({"r": fail("redis", S.TIMEOUT)}, C.DEPENDENCY_DOWN, ["r"], id="redis-timeout"),
    pytest.param({"r": fail("redis", S.UNREACHABLE)}, C.DEPENDENCY_DOWN, ["r"],
                 id="redis-unreachable"),
    pytest.param({"r": fail("redis", S.TIMEOUT), "health": fail("http_health", S.SERVER_ERROR),
                  "login": fail("login", S.SERVER_ERROR)},
                 C.DEPENDENCY_DOWN, ["r"], id="dead-redis-takes-app-down-not-its-fault"),
    pytest.param({"pg": fail("postgres_integrity", S.UNREACHABLE),
                  "c": fail("docker_container", S.CONTAINER_DOWN)},
                 C.DEPENDENCY_DOWN, ["pg"], id="dependency-beats-container-down"),
    pytest.param({"r": fail("redis", S.BAD_RESPONSE), "health": fail("http_health",
                                                                      S.SERVER_ERROR)},
                 C.APP_DOWN, ["health"], id="redis-bad-response-is-not-down"),
    pytest.param({"r": fail("redis", S.TIMEOUT), "pg": fail("postgres_integrity", S.UNREACHABLE)},
                 C.DEPENDENCY_DOWN, ["r", "pg"], id="both-dependencies-down"),
    # --- key_invalid: above app_down (a dead app may be the key's victim) and auth_broken
    pytest.param({"key": fail("fernet_key", S.KEY_INVALID)}, C.KEY_INVALID, ["key"],
                 id="fernet-key-invalid"),
    pytest.param({"key": fail("fernet_key", S.KEY_INVALID), "login": fail("login",
                                                                          S.SERVER_ERROR)},
                 C.KEY_INVALID, ["key"], id="key-beats-auth"),
    pytest.param({"key": fail("fernet_key", S.KEY_INVALID), "health": fail("http_health",
                                                                           S.SLOW)},
                 C.KEY_INVALID, ["key"], id="key-beats-perf"),
    pytest.param({"key": fail("fernet_key", S.KEY_INVALID), "health": fail("http_health",
                                                                           S.UNREACHABLE)},
                 C.KEY_INVALID, ["key"], id="key-beats-app-down"),
    pytest.param({"key": ("fernet_key", below(S.KEY_INVALID)),
                  "health": fail("http_health", S.UNREACHABLE)},
                 None, [], id="app-down-waits-for-a-key-on-its-way-to-failing"),
    # --- below the failure threshold: not evidence yet
    pytest.param({"health": ("http_health", below(S.UNREACHABLE))}, None, [],
                 id="health-below-threshold"),
    pytest.param({"db": ("sqlite_integrity", below(S.INTEGRITY))}, None, [],
                 id="corruption-below-threshold"),
    pytest.param({"r": ("redis", below(S.TIMEOUT))}, None, [], id="redis-below-threshold"),
    pytest.param({"login": ("login", below(S.SERVER_ERROR)), "health": ok("http_health")},
                 None, [], id="login-below-threshold"),
    pytest.param({"key": ("fernet_key", below(S.KEY_INVALID))}, None, [],
                 id="key-below-threshold"),
    pytest.param({"health": ("http_health", below(S.SLOW))}, None, [],
                 id="slow-below-threshold"),
    pytest.param({"health": ("http_health", below(S.UNREACHABLE)),
                  "db": ("sqlite_integrity", below(S.INTEGRITY)),
                  "r": ("redis", below(S.TIMEOUT)), "login": ("login", below(S.SERVER_ERROR))},
                 None, [], id="everything-below-threshold"),
    # --- symptoms that are no incident class on their own
    pytest.param({"log": fail("log_errors", S.LOG_ERRORS)}, None, [], id="log-errors-alone"),
    pytest.param({"bk": fail("backup_freshness", S.BACKUP_STALE)}, None, [],
                 id="stale-backup-alone"),
    pytest.param({"x": fail("some_custom_kind", S.SERVER_ERROR)}, None, [], id="unknown-kind"),
]


@pytest.mark.parametrize(("health", "expected", "probes"), ROWS)
def test_classify_table(health: TargetHealth, expected: IncidentClass | None,
                        probes: list[str]) -> None:
    found = classify(health)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found == (expected, probes)


# ---------------------------------------------------------------------------------------------
# a probe that errors is not evidence about the target (through the real debounce)

def _obs(kind: str, status: Status, symptom: Symptom | None, i: int) -> Observation:
    return Observation("p", kind, status, f"#{i}", 0.01, symptom, at=T0 + timedelta(seconds=i))


ALL_KINDS = ["http_health", "docker_container", "k8s_deployment", "login", "prometheus_query",
             "sqlite_integrity", "postgres_integrity", "redis", "fernet_key", "log_errors",
             "backup_freshness"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_probe_errors_leave_nothing(kind: str) -> None:
    h = ProbeHealth()
    for i in range(10):
        h = debounce(h, _obs(kind, Status.ERROR, Symptom.PROBE_ERROR, i), 3, 1)
    assert not h.failing
    assert classify({"p": (kind, h)}) is None
    assert not all_passing({"p": (kind, h)})  # not proven healthy either


def test_probe_error_keeps_an_earlier_verdict() -> None:
    h = ProbeHealth()
    for i in range(3):
        h = debounce(h, _obs("http_health", Status.FAIL, Symptom.UNREACHABLE, i), 3, 1)
    assert classify({"health": ("http_health", h)}) == (C.APP_DOWN, ["health"])
    for i in range(3, 8):
        h = debounce(h, _obs("http_health", Status.ERROR, Symptom.PROBE_ERROR, i), 3, 1)
    assert classify({"health": ("http_health", h)}) == (C.APP_DOWN, ["health"])


@pytest.mark.parametrize(("kind", "symptom", "expected"), [
    pytest.param("http_health", S.SERVER_ERROR, C.APP_DOWN, id="health"),
    pytest.param("sqlite_integrity", S.INTEGRITY, C.DATA_CORRUPTION, id="integrity"),
    pytest.param("redis", S.TIMEOUT, C.DEPENDENCY_DOWN, id="redis"),
    pytest.param("fernet_key", S.KEY_INVALID, C.KEY_INVALID, id="key"),
])
def test_counts_only_from_the_failure_threshold(kind: str, symptom: Symptom,
                                                expected: IncidentClass) -> None:
    h = ProbeHealth()
    for i in range(2):
        h = debounce(h, _obs(kind, Status.FAIL, symptom, i), 3, 1)
        assert classify({"p": (kind, h)}) is None
    h = debounce(h, _obs(kind, Status.FAIL, symptom, 2), 3, 1)
    assert classify({"p": (kind, h)}) == (expected, ["p"])


def test_login_failing_while_health_is_still_failing_is_not_auth_broken() -> None:
    # The app died: login reached its failure threshold one run before health reached its own.
    # monitor evaluates after every probe run, so this state is seen, and the first class
    # found owns the incident: a database rollback for a dead app.
    health = {"health": ("http_health", below(S.UNREACHABLE)),
              "login": fail("login", S.SERVER_ERROR)}
    found = classify(health)
    assert found is None or found[0] is not C.AUTH_BROKEN


@pytest.mark.parametrize(("health", "expected"), [
    pytest.param({"login": fail("login", S.ACCOUNT_LOCKED), "health": ok("http_health")},
                 {"login": S.ACCOUNT_LOCKED}, id="locked"),
    pytest.param({"login": fail("login", S.WRONG_CREDENTIALS)}, {"login": S.WRONG_CREDENTIALS},
                 id="refused"),
    pytest.param({"login": ("login", below(S.ACCOUNT_LOCKED))}, {}, id="below-threshold"),
    pytest.param({"login": fail("login", S.LOGINS_REFUSED)}, {}, id="two-accounts-refused"),
    pytest.param({"login": fail("login", S.SERVER_ERROR)}, {}, id="5xx"),
    pytest.param({"h": fail("http_health", S.BAD_RESPONSE)}, {}, id="not-a-login-probe"),
])
def test_probe_account_trouble(health: TargetHealth, expected: dict[str, Symptom]) -> None:
    assert probe_account_trouble(health) == expected


def test_all_passing() -> None:
    assert not all_passing({})
    assert all_passing({"a": ok("http_health"), "b": ok("login")})
    assert not all_passing({"a": ok("http_health"), "b": ("login", ProbeHealth())})
    assert not all_passing({"a": ok("http_health"), "b": fail("login", S.SERVER_ERROR)})


# ---------------------------------------------------------------------------------------------
# property: the class highest in the precedence list among those whose rules match

PRECEDENCE = [C.DATA_CORRUPTION, C.DEPENDENCY_DOWN, C.KEY_INVALID, C.APP_DOWN, C.AUTH_BROKEN,
              C.PERF_DEGRADED]
HEALTH = {"http_health", "docker_container", "k8s_deployment"}


def _matches(cls: IncidentClass, kind: str, symptom: Symptom | None) -> bool:
    """Each rule on its own, written from DESIGN.md, for one failing probe."""
    if cls is C.DATA_CORRUPTION:  # lost Redis sessions are lost data too
        return (kind in ("sqlite_integrity", "postgres_integrity") and symptom in (
            S.INTEGRITY, S.MISSING_TABLE, S.BAD_REVISION, S.ROWS_COLLAPSED)) or (
            kind == "redis" and symptom is S.ROWS_COLLAPSED)
    if cls is C.DEPENDENCY_DOWN:
        return kind in ("redis", "postgres_integrity") and symptom in (
            S.UNREACHABLE, S.TIMEOUT, S.DEPENDENCY_DOWN)
    if cls is C.APP_DOWN:
        return kind in HEALTH and symptom is not S.SLOW
    if cls is C.KEY_INVALID:
        return kind == "fernet_key"
    if cls is C.AUTH_BROKEN:
        return kind == "login" and symptom in (S.SERVER_ERROR, S.LOGINS_REFUSED,
                                                S.BAD_RESPONSE)
    assert cls is C.PERF_DEGRADED
    return kind in HEALTH | {"login", "prometheus_query"} and symptom is S.SLOW


# Debounced verdicts: failing (past the threshold), or passing / not yet proven with no failure
# pending (a failure below the threshold is covered by the table and the xfail above).
health_st = st.one_of(
    st.builds(ProbeHealth, failing=st.just(True), failures=st.integers(1, 5),
              symptom=st.one_of(st.none(), st.sampled_from(list(Symptom)))),
    st.builds(ProbeHealth, passing=st.booleans()),
)
target_health_st = st.dictionaries(
    st.text(alphabet="abcdefgh-", min_size=1, max_size=6),
    st.tuples(st.sampled_from([*ALL_KINDS, "custom"]), health_st),
    max_size=8,
)


@FAST
@given(health=target_health_st)
def test_highest_matching_class_wins(health: TargetHealth) -> None:
    evidence = {
        cls: [name for name, (kind, h) in health.items()
              if h.failing and _matches(cls, kind, h.symptom)]
        for cls in PRECEDENCE
    }
    expected = next(((cls, evidence[cls]) for cls in PRECEDENCE if evidence[cls]), None)
    assert classify(health) == expected


@FAST
@given(health=target_health_st, extra=target_health_st)
def test_passing_probes_never_change_the_class(health: TargetHealth,
                                               extra: TargetHealth) -> None:
    quiet = {f"quiet-{name}": (kind, PASSING) for name, (kind, _) in extra.items()}
    assert classify({**health, **quiet}) == classify(health)
