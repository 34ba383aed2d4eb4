"""The cluster's clocks, all derived from `daemon.takeover_after` so that they stay consistent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """With T = takeover_after (10 s by default):

    - the owner renews its session every T/20 and stops acting (fences) when no renewal has
      succeeded for `fence_after` = T/5, counted from when the last good one was sent;
    - PostgreSQL ends an owner's session that said nothing for T/2 (idle_session_timeout,
      TCP keepalives), which releases its advisory locks;
    - the others try the free locks every T/10, and a new owner starts acting only once the
      previous owner's last renewal is older than its `fence_after` plus a margin (T/10, for
      a busy host's late timers), so the previous owner has stopped before the new one
      starts, whatever ended its session.

    A dead process loses its session at once: takeover in about 0.3 T. A host cut off from the
    database: at most T/2 + T/10 (+ the first probe).
    """

    takeover_after: float

    @property
    def heartbeat(self) -> float:
        return self.takeover_after / 20

    @property
    def fence_after(self) -> float:
        return self.takeover_after / 5

    @property
    def margin(self) -> float:
        return self.takeover_after / 10

    @property
    def retry(self) -> float:
        return self.takeover_after / 10

    @property
    def session_timeout(self) -> float:
        return self.takeover_after / 2
