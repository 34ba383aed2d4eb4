"""The peer check alone: uids, the peer's primary and supplementary groups, and the fallback."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import pytest

from rollbackd.daemon.control.server import ControlServer, ControlSetupError, Peer

STAFF = grp.getgrnam("staff").gr_gid


async def _handler(cmd: str, args: dict, peer: Peer) -> None:
    return None


def server(**kw: object) -> ControlServer:
    return ControlServer(Path("/nonexistent/control.sock"), _handler, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("peer, allowed", [
    pytest.param(Peer(1, 0, 0), True, id="root"),
    pytest.param(Peer(1, os.getuid(), 0), True, id="the daemon's own user"),
    pytest.param(Peer(1, 4242, 4242, ()), True, id="an allowed uid"),
    pytest.param(Peer(1, 65534, STAFF, ()), True, id="primary group allowed"),
    pytest.param(Peer(1, 65534, 65534, (100, STAFF)), True, id="supplementary group allowed"),
    pytest.param(Peer(1, 65534, 65534, (100,)), False, id="other groups"),
    pytest.param(Peer(1, 65534, 65534, ()), False, id="no groups"),
    pytest.param(Peer(1, 987654, 987654, None), False, id="unknown kernel groups, unknown user"),
])
def test_permits(peer: Peer, allowed: bool) -> None:
    assert server(allowed_uids=[4242], allowed_groups=["staff"]).permits(peer) is allowed


def test_without_allowed_groups_a_group_lets_nobody_in() -> None:
    assert not server(allowed_uids=[]).permits(Peer(1, 65534, STAFF, (STAFF,)))


def test_an_unknown_allowed_group_is_a_setup_error() -> None:
    with pytest.raises(ControlSetupError, match="daemon.allowed_groups: no group named 'nope'"):
        server(allowed_uids=[], allowed_groups=["nope"])
