"""The incident lifecycle: every pair of states is either an allowed transition or refused."""

from __future__ import annotations

import itertools

import pytest

from rollbackd.policies.lifecycle import (
    OPEN_STATES,
    SELF_CLOSING,
    TRANSITIONS,
    InvalidTransition,
    State,
    check_transition,
)

TERMINAL = {State.RESOLVED, State.TRANSIENT, State.DENIED, State.ABANDONED}

# The lifecycle as the runbook tells it, written out independently of TRANSITIONS.
ALLOWED = {
    (State.OPEN, State.AWAITING_APPROVAL),  # destructive: wait for a person
    (State.OPEN, State.REMEDIATING),
    (State.OPEN, State.ESCALATED),
    (State.OPEN, State.DRY_RUN),
    (State.OPEN, State.TRANSIENT),  # recovered before any action
    (State.OPEN, State.HELD),  # flapping
    (State.AWAITING_APPROVAL, State.REMEDIATING),  # approved
    (State.AWAITING_APPROVAL, State.DENIED),
    (State.AWAITING_APPROVAL, State.TRANSIENT),
    (State.AWAITING_APPROVAL, State.ESCALATED),
    (State.REMEDIATING, State.VERIFYING),
    (State.REMEDIATING, State.FAILED),
    (State.REMEDIATING, State.HELD),  # interrupted step
    (State.REMEDIATING, State.ESCALATED),
    (State.VERIFYING, State.RESOLVED),
    (State.VERIFYING, State.FAILED),
    (State.VERIFYING, State.HELD),
    (State.VERIFYING, State.ESCALATED),
    (State.FAILED, State.ESCALATED),
    (State.ESCALATED, State.RESOLVED),
    (State.ESCALATED, State.TRANSIENT),
    (State.ESCALATED, State.REMEDIATING),  # a person runs `rollbackctl rollback`
    (State.HELD, State.RESOLVED),
    (State.HELD, State.REMEDIATING),
    (State.HELD, State.ESCALATED),
    (State.DRY_RUN, State.RESOLVED),
    (State.DRY_RUN, State.TRANSIENT),
    # Abandoned: a person takes a held incident over (`deny`), or the target left the config
    # while nothing ran (a running plan finishes first).
    (State.HELD, State.ABANDONED),
    (State.OPEN, State.ABANDONED),
    (State.AWAITING_APPROVAL, State.ABANDONED),
    (State.ESCALATED, State.ABANDONED),
    (State.DRY_RUN, State.ABANDONED),
}
PAIRS = [(a, b) for a, b in itertools.product(State, State) if a != b]


def test_the_table_is_the_documented_one() -> None:
    assert set(TRANSITIONS) == set(State)
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED


@pytest.mark.parametrize(("old", "new"), [pytest.param(a, b, id=f"{a}->{b}")
                                          for a, b in PAIRS if (a, b) in ALLOWED])
def test_allowed_transition_passes(old: State, new: State) -> None:
    check_transition(old, new)
    check_transition(old.value, new.value)  # the journal stores plain strings


@pytest.mark.parametrize(("old", "new"), [pytest.param(a, b, id=f"{a}->{b}")
                                          for a, b in PAIRS if (a, b) not in ALLOWED])
def test_every_other_transition_raises(old: State, new: State) -> None:
    with pytest.raises(InvalidTransition, match=f"from {old.value} to {new.value}"):
        check_transition(old.value, new.value)


@pytest.mark.parametrize("state", list(State))
def test_staying_in_a_state_is_a_no_op(state: State) -> None:
    check_transition(state.value, state.value)


def test_unknown_state_names_are_refused() -> None:
    with pytest.raises((InvalidTransition, ValueError)):
        check_transition("open", "exploded")
    with pytest.raises((InvalidTransition, ValueError)):
        check_transition("exploded", "open")


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_have_no_way_out(state: State) -> None:
    assert TRANSITIONS[state] == frozenset()
    for other in State:
        if other is not state:
            with pytest.raises(InvalidTransition):
                check_transition(state, other)


def test_nothing_returns_to_open() -> None:
    assert all(State.OPEN not in targets for targets in TRANSITIONS.values())


def test_open_and_self_closing_sets_are_consistent() -> None:
    assert SELF_CLOSING <= OPEN_STATES
    assert not OPEN_STATES & TERMINAL
    assert State.FAILED not in OPEN_STATES  # passes through to escalated at once
    # a self-closing incident can close without action (transient) in one step
    for state in SELF_CLOSING:
        assert State.TRANSIENT in TRANSITIONS[state] or State.RESOLVED in TRANSITIONS[state]
    # work in progress or waiting for a person does not close by itself
    assert not {State.REMEDIATING, State.VERIFYING, State.HELD} & SELF_CLOSING


def _reachable(start: State) -> set[State]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_open() -> None:
    assert _reachable(State.OPEN) == set(State)


@pytest.mark.parametrize("state", [s for s in State if s not in TERMINAL])
def test_every_open_incident_can_end(state: State) -> None:
    assert _reachable(state) & TERMINAL
