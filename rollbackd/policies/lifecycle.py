"""The incident lifecycle as an explicit state machine: every transition names the state it leaves."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    OPEN = "open"
    AWAITING_APPROVAL = "awaiting_approval"
    REMEDIATING = "remediating"
    VERIFYING = "verifying"
    RESOLVED = "resolved"
    FAILED = "failed"
    ESCALATED = "escalated"
    HELD = "held"  # an interrupted step or flapping: a person decides
    DRY_RUN = "dry_run"  # dry run or shadow: the plan is recorded, nothing runs
    TRANSIENT = "transient"  # recovered by itself before any action
    DENIED = "denied"  # a person refused the plan
    ABANDONED = "abandoned"  # a person finishes it by hand, or its target left the config


OPEN_STATES = frozenset({State.OPEN, State.AWAITING_APPROVAL, State.REMEDIATING,
                         State.VERIFYING, State.HELD, State.ESCALATED, State.DRY_RUN})
"""An incident in one of these still owns its target: no second incident opens beside it."""

# Incidents in these close by themselves once every probe passes again.
SELF_CLOSING = frozenset({State.OPEN, State.AWAITING_APPROVAL, State.ESCALATED, State.DRY_RUN})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.AWAITING_APPROVAL, State.REMEDIATING, State.ESCALATED,
                           State.DRY_RUN, State.TRANSIENT, State.HELD, State.ABANDONED}),
    State.AWAITING_APPROVAL: frozenset({State.REMEDIATING, State.DENIED, State.TRANSIENT,
                                        State.ESCALATED, State.ABANDONED}),
    State.REMEDIATING: frozenset({State.VERIFYING, State.FAILED, State.HELD, State.ESCALATED}),
    State.VERIFYING: frozenset({State.RESOLVED, State.FAILED, State.HELD, State.ESCALATED}),
    State.FAILED: frozenset({State.ESCALATED}),
    State.ESCALATED: frozenset({State.RESOLVED, State.TRANSIENT, State.REMEDIATING,
                                State.ABANDONED}),
    State.HELD: frozenset({State.RESOLVED, State.REMEDIATING, State.ESCALATED, State.ABANDONED}),
    State.DRY_RUN: frozenset({State.RESOLVED, State.TRANSIENT, State.ABANDONED}),
    State.DENIED: frozenset(),
    State.ABANDONED: frozenset(),
    State.RESOLVED: frozenset(),
    State.TRANSIENT: frozenset(),
}


class InvalidTransition(Exception):
    pass


def check_transition(old: str, new: str) -> None:
    if old == new:
        return
    if State(new) not in TRANSITIONS[State(old)]:
        raise InvalidTransition(f"incident cannot go from {old} to {new}")
