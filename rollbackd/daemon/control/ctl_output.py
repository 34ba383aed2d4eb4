"""rollbackctl's human output: one small renderer per command, tables with upper-case headers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rollbackd.daemon.control.ctl_format import cell, duration, local_time


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[cell(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else "-"


def _state(target: dict[str, Any], overrides: list[dict[str, Any]]) -> str:
    """The target's state, with any pause or silence on it (or on every target) beside it."""
    kinds = dict.fromkeys(o["kind"] for o in overrides if o["target"] in (target["target"], "*"))
    shown = {"pause": "paused", "silence": "silenced"}
    return ", ".join([str(target["state"]), *(shown.get(k, k) for k in kinds),
                      *target.get("attention", [])])


def _status(r: dict[str, Any]) -> str:
    rows = [{**t, "probes": " ".join(f"{p}:{s}" for p, s in t["probes"].items()),
             "version": _short(t["version"]), "state": _state(t, r.get("overrides", []))}
            for t in r["targets"]]
    owned = "instance" in r  # several instances share the journal: who acts for each target
    out = [f"rollbackd pid {r['pid']}, up {duration(r['uptime'])}: {r['summary']}"
           + (f"\ninstance {r['instance']}" if owned else ""),
           table(rows, ["target", *(["owner"] if owned else []), "state", "incident", "version",
                        "probes"])]
    if r.get("breakers"):
        out += ["", "breakers:", table(r["breakers"], ["target", "plan", "mode"])]
    if r.get("overrides"):
        out += ["", "overrides:", table(r["overrides"], ["kind", "target", "until", "by",
                                                         "reason"])]
    out.append(f"mail: {r['mail']['sent']} sent, {r['mail']['queued']} queued")
    return "\n".join(out)


def _show(r: dict[str, Any]) -> str:
    if "markdown" in r:
        return str(r["markdown"])
    head = f"incident {r['id']} {r['target']} {r['incident_class']} {r['state']}\n{r['reason']}"
    if r["state"] == "held" and r.get("held_reason"):  # what a restart found of the cut step
        head += f"\nheld: {r['held_reason']}"
    steps = table(r["steps"], ["name", "state", "duration", "detail"])
    timeline = table(r["timeline"], ["at", "event", "detail"])
    return f"{head}\n\nsteps:\n{steps}\n\ntimeline:\n{timeline}"


def _known_good(rows: list[dict[str, Any]]) -> str:
    shown = [{**e, "version": ("* " if e["current"] else "  ") + _short(e["version"]),
              "since": e["known_good_at"] or e["first_seen"]} for e in rows]
    return table(shown, ["version", "state", "since", "alembic_revision", "bad_reason"]) + \
        "\n(* = deployed now)"


def _rollback(r: dict[str, Any]) -> str:
    to = ", ".join(f"{k} {_short(v)}" for k, v in r["to"].items())
    lines = [f"{r['target']}: {r['plan']} to {to}: {r['reason']}",
             "steps: " + ", ".join(r["steps"])]
    if r.get("dry_run"):
        gate = f"needs --force: {r['gate']}" if r["gate"] else "would run now"
        return "\n".join([*lines, f"dry run, nothing changed; {gate}"])
    forced = f" (forced past: {r['gate']})" if r.get("forced") else ""
    return "\n".join([*lines, f"started as incident {r['id']}{forced}; follow it with "
                      f"`rollbackctl show {r['id']}`"])


def _audit(r: Any) -> str:
    if isinstance(r, dict):
        return f"audit chain verified: {r['rows']} rows, unbroken"
    rows = [{**a, "args": json.dumps(a["args"], sort_keys=True)} for a in r]
    return table(rows, ["id", "at", "uid", "pid", "cmd", "outcome", "args"])


def _emergency_admin(r: dict[str, Any]) -> str:
    verb = "created" if r["created"] else "renewed"
    return (f"emergency admin {r['email']} on {r['target']} {verb}.\n"
            f"  password: {r['password']}\n  expires:  {local_time(r['expires_at'])}\n"
            "This password is shown once and stored nowhere in clear: keep it safe now.")


def _lockdown(r: dict[str, Any]) -> str:
    return (f"lockdown of {r['target']} requested as incident {r['id']}: it would lock "
            f"{r['accounts_to_lock']} accounts (all but {r['spared']}).\n"
            f"Nothing has changed yet: `rollbackctl approve {r['id']}` runs it, "
            f"`rollbackctl deny {r['id']}` drops it.")


def _approve(r: dict[str, Any]) -> str:
    return (f"incident {r['id']}: {r['started']} started; `rollbackctl show {r['id']}` "
            "follows it")


def _deny(r: dict[str, Any]) -> str:
    if r["state"] == "abandoned":
        return (f"incident {r['id']}: abandoned, nothing more will run; a person finishes it "
                f"(`rollbackctl show {r['id']}` says what was left)")
    return f"incident {r['id']}: denied, nothing was run"


def _unlock(r: dict[str, Any]) -> str:
    until = (f"locked until {local_time(r['was_locked_until'])}" if r["was_locked_until"]
             else "not locked")
    return (f"{r['email']} on {r['target']} unlocked (was {until}, {r['failed_attempts']} failed "
            "attempts cleared)")


def _override(r: dict[str, Any]) -> str:
    return f"{r['kind']} {r['target']} until {local_time(r['until'])}: {r['reason']}"


def _backups(rows: list[dict[str, Any]]) -> str:
    def restore_test(b: dict[str, Any]) -> str | None:
        at = b.get("restore_tested_at")
        shown = local_time(at) if at else ""
        return None if not at else f"FAILED {shown}" if b.get("restore_test_error") else f"ok {shown}"

    failed = [f"{b['kind']} backup FAILED at {local_time(b['created_at'])}: {b['failed']}"
              for b in rows if b.get("failed")]
    taken = table([{**b, "sha256": _short(b["sha256"]), "restore_test": restore_test(b)}
                   for b in rows if not b.get("failed")],
                  ["id", "kind", "created_at", "size", "verified", "restore_test", "sha256",
                   "path"])
    return "\n".join([*failed, taken])


def _reload(r: dict[str, Any]) -> str:
    lines = [f"config reloaded: {', '.join(r['targets'])}"]
    waiting = r.get("needs_restart", [])
    if waiting:
        lines.append("not applied until a restart (the old value stays in force):")
        lines += [f"  {w['key']}: {w['old']} -> {w['new']}" for w in waiting]
    return "\n".join(lines)


RENDER: dict[str, Callable[[Any], str]] = {
    "status": _status,
    "incidents": lambda r: table(r, ["id", "target", "class", "state", "detected", "reason"]),
    "show": _show,
    "breaker": lambda r: table(r, ["target", "plan", "mode", "failures", "opened_at"])
    if isinstance(r, list) else f"breaker {r['target']} {r['plan']}: {r['mode']}",
    "known-good": _known_good,
    "mark-bad": lambda r: f"{r['target']}: {_short(r['version'])} marked bad",
    "unmark": lambda r: f"{r['target']}: {_short(r['version'])} is {r['state']} again",
    "rollback": _rollback,
    "audit": _audit,
    "backups": _backups,
    "backup": lambda r: table(r, ["id", "kind", "size", "verified", "path"]),
    "emergency-admin": _emergency_admin,
    "unlock-admin": _unlock,
    "lockdown": _lockdown,
    "approve": _approve,
    "deny": _deny,
    "ack": lambda r: f"incident {r['id']} acknowledged",
    "pause": _override,
    "silence": _override,
    "resume": lambda r: f"{r['target']}: {r['ended']} override(s) ended",
    "reload": _reload,
    "help": lambda r: "\n".join(f"{k:16} {v}" for k, v in r.items()),
}


def human(cmd: str, result: Any) -> str:
    render = RENDER.get(cmd)
    return render(result) if render else json.dumps(result, indent=2, default=str)
