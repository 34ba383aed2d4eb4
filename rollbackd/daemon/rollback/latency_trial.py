"""Test first's probe: the live version and the candidate asked in the same rounds, judged by
p95 latency against the baseline's limit and against each other.

Rounds alternate which version is asked first, so a slow moment of the host falls on both.
The candidate must answer the expected status in `samples` rounds in a row; a wrong answer
starts the count again (it may still be warming up) until probe_within runs out. The live
version's time counts whatever it answered: a live version that times out is slow.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from rollbackd.daemon.rollback.candidate_settings import GitTestFirst
from rollbackd.policies.latency import percentile


@dataclass(frozen=True)
class Round:
    live: float
    """Seconds the live version took to answer (or to fail)."""
    candidate: float
    """Seconds the candidate took to answer the expected status."""


@dataclass(frozen=True)
class Verdict:
    faster: bool
    why: str
    live_p95: float | None = None
    candidate_p95: float | None = None


def ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def judge(rounds: list[Round], s: GitTestFirst) -> Verdict:
    """Faster: the candidate's p95 within max_latency (when set) and at most faster_ratio of the
    live version's p95 of the same rounds. Pure."""
    live, cand = percentile([r.live for r in rounds]), percentile([r.candidate for r in rounds])
    figures = (f"candidate p95 {ms(cand)}, live p95 {ms(live)} over {len(rounds)} rounds")
    if s.max_latency is not None and cand > s.max_latency:
        return Verdict(False, f"{figures}: the candidate is above the latency limit "
                       f"{ms(s.max_latency)}", live, cand)
    if cand > live * s.faster_ratio:
        return Verdict(False, f"{figures}: the candidate is not faster (it must be at most "
                       f"{s.faster_ratio:g} x the live p95, {ms(live * s.faster_ratio)})",
                       live, cand)
    return Verdict(True, f"{figures}: faster", live, cand)


async def _ask(http: httpx.AsyncClient, url: str) -> tuple[float, int | None, str]:
    sent = time.monotonic()
    try:
        code = (await http.get(url)).status_code
        return time.monotonic() - sent, code, f"HTTP {code}"
    except httpx.HTTPError as exc:
        return time.monotonic() - sent, None, type(exc).__name__


async def trial(s: GitTestFirst) -> tuple[Verdict | None, str]:
    """(the verdict, or None when the candidate never gave `samples` good answers in a row
    within probe_within; the last thing the candidate answered)."""
    live_url = f"http://{s.probe_host}:{s.port}{s.probe_path}"
    cand_url = f"http://{s.probe_host}:{s.spare_port}{s.probe_path}"
    deadline = time.monotonic() + s.probe_within
    rounds: list[Round] = []
    last = "no answer yet"
    timeout = min(s.probe_within, 5.0)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
        while len(rounds) < s.samples and time.monotonic() < deadline:
            if len(rounds) % 2 == 0:
                live, _, _ = await _ask(http, live_url)
                took, code, last = await _ask(http, cand_url)
            else:
                took, code, last = await _ask(http, cand_url)
                live, _, _ = await _ask(http, live_url)
            if code == s.probe_expect_status:
                rounds.append(Round(live, took))
            else:
                rounds.clear()
                await asyncio.sleep(0.2)
    if len(rounds) < s.samples:
        return None, last
    return judge(rounds, s), last
