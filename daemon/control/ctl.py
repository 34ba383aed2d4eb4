"""rollbackctl: the operator's client for the control socket; tables for people, --json for scripts."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from daemon.control.protocol import PROTOCOL_VERSION

DEFAULT_SOCKET = "/run/rollbackd/control.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    pass


def request(path: str, cmd: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            _connect(sock, path, timeout)
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {path}: is rollbackd running? "
                              "(--socket or $ROLLBACKCTL_SOCKET choose another)") from None
        except PermissionError:
            raise Unreachable(f"permission denied on {path}: join the socket's group "
                              "(the 'rollbackd' group by default) or ask root") from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection refused at {path}: rollbackd is not running") from None
        sock.settimeout(timeout)
        req = {"v": PROTOCOL_VERSION, "cmd": cmd, "args": args}
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
        except BrokenPipeError:
            pass  # the daemon answered and closed early (a refusal): its reply is still there
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise Unreachable(f"rollbackd closed the connection on {path} without a reply")
    reply: dict[str, Any] = json.loads(data)
    return reply


def _connect(sock: socket.socket, path: str, timeout: float) -> None:
    """Connect, waiting while a busy daemon's listen backlog is full (EAGAIN), up to timeout."""
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    while True:
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: rollbackd did not accept within {timeout:g}s") from None
            time.sleep(0.05)
    sock.setblocking(True)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _human(cmd: str, result: Any) -> str:
    if cmd == "status":
        rows = [{**t, "probes": " ".join(f"{p}:{s}" for p, s in t["probes"].items()),
                 "version": (t["version"] or "-")[:12]} for t in result["targets"]]
        out = [f"rollbackd pid {result['pid']}, up {result['uptime']}s: {result['summary']}",
               _table(rows, ["target", "state", "incident", "version", "probes"])]
        if result["breakers"]:
            out.append(_table(result["breakers"], ["target", "plan", "mode"]))
        out.append(f"mail: {result['mail']['sent']} sent, {result['mail']['queued']} queued")
        return "\n".join(out)
    if cmd == "incidents":
        return _table(result, ["id", "target", "class", "state", "detected", "reason"])
    if cmd == "show" and "markdown" in result:
        return str(result["markdown"])
    if cmd == "show":
        head = (f"incident {result['id']} {result['target']} {result['incident_class']} "
                f"{result['state']}\n{result['reason']}")
        steps = _table(result["steps"], ["name", "state", "duration", "detail"])
        timeline = _table(result["timeline"], ["at", "event", "detail"])
        return f"{head}\n\nsteps:\n{steps}\n\ntimeline:\n{timeline}"
    if cmd == "breaker" and isinstance(result, list):
        return _table(result, ["target", "plan", "mode", "failures", "opened_at"])
    if cmd == "help":
        return "\n".join(f"{k:12} {v}" for k, v in result.items())
    return json.dumps(result, indent=2, default=str)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollbackctl", description="Steer a running rollbackd.")
    p.add_argument("--socket", default=os.environ.get("ROLLBACKCTL_SOCKET", DEFAULT_SOCKET))
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("status", help="daemon, targets, open incidents, breakers")
    inc = sub.add_parser("incidents", help="recent incidents")
    inc.add_argument("--limit", type=int, default=20)
    show = sub.add_parser("show", help="one incident")
    show.add_argument("id", type=int)
    show.add_argument("--report", action="store_true", help="the Markdown incident report")
    ack = sub.add_parser("ack", help="acknowledge an incident")
    ack.add_argument("id", type=int)
    for name, what in (("pause", "observe only, act on nothing"),
                       ("silence", "act as usual, send no mail")):
        o = sub.add_parser(name, help=f"{what} (a target, or every target)")
        o.add_argument("target", nargs="?")
        o.add_argument("--for", dest="for", default="1h", metavar="DURATION")
        o.add_argument("--reason", required=True)
    resume = sub.add_parser("resume", help="end pause and silence")
    resume.add_argument("target", nargs="?")
    for name, what in (("approve", "run the plan of a waiting incident, or resume a held one"),
                       ("deny", "refuse the plan of a waiting incident")):
        a = sub.add_parser(name, help=what)
        a.add_argument("id", type=int)
    br = sub.add_parser("breaker", help="circuit breakers: list, or reset TARGET [PLAN]")
    br.add_argument("action", choices=("list", "reset"), nargs="?", default="list")
    br.add_argument("target", nargs="?")
    br.add_argument("plan", nargs="?", default="deployment_rollback")
    sub.add_parser("reload", help="re-read the config file")
    sub.add_parser("help", help="the commands the daemon knows")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    args = {k: v for k, v in vars(ns).items()
            if k not in ("socket", "json", "cmd") and v is not None}
    try:
        reply = request(ns.socket, ns.cmd, args)
    except Unreachable as exc:
        print(f"rollbackctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, ValueError) as exc:
        print(f"rollbackctl: {ns.socket}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if not reply.get("ok"):
        print(f"{ns.cmd}: ERROR ({reply.get('code')}) {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    result = reply.get("result")
    print(json.dumps(result, indent=2, default=str) if ns.json else _human(ns.cmd, result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
