"""rollbackctl: the operator's client for the control socket; tables for people, --json for scripts."""

from __future__ import annotations

import argparse
import grp
import json
import os
import socket
import sys
import time
from typing import Any, NoReturn

from rollbackd.daemon.control.ctl_output import human
from rollbackd.daemon.control.protocol import PROTOCOL_VERSION, Request

DEFAULT_SOCKET = "/run/rollbackd/control.sock"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_PIPE = 141
"""stdout was closed (`rollbackctl incidents | head`): what a shell reports for SIGPIPE."""
USAGE_CODES = ("bad_args", "unknown_command")
"""Refusals that are the caller's usage error: exit 2, as argparse's own."""
CLOSED = ("resolved", "failed", "escalated", "held", "denied", "abandoned", "transient",
          "dry_run")


class Unreachable(Exception):
    pass


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised, so that --json can report it as JSON."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("rollbackd")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _group_of(path: str) -> str | None:
    """The group a peer must be in to open the socket (or, failing that, its directory)."""
    for p in (path, os.path.dirname(path) or "."):
        try:
            gid = os.stat(p).st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return None


def _denied(path: str) -> str:
    group = _group_of(path)
    join = (f"join the group '{group}' that owns it (usermod -aG {group} $USER, then log in "
            "again)" if group else "join the daemon's group")
    return (f"permission denied on {path}: {join}; rollbackd must also allow you "
            "(daemon.allowed_uids or daemon.allowed_groups), or ask root")


BUSY_RETRY = 0.1
"""Seconds between tries while the daemon refuses clients beyond its cap (reply `busy`)."""


def request(path: str, cmd: str, args: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request; while the daemon is at its connection cap, tried again up to timeout."""
    deadline = time.monotonic() + timeout
    while True:
        reply = _exchange(path, cmd, args, timeout)
        if reply.get("code") != "busy" or time.monotonic() + BUSY_RETRY > deadline:
            return reply
        time.sleep(BUSY_RETRY)


def _exchange(path: str, cmd: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            _connect(sock, path, timeout)
        except FileNotFoundError:
            raise Unreachable(f"no control socket at {path}: is rollbackd running? "
                              "(--socket or $ROLLBACKCTL_SOCKET choose another)") from None
        except PermissionError:
            raise Unreachable(_denied(path)) from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection refused at {path}: rollbackd is not running") from None
        sock.settimeout(timeout)
        req: Request = {"v": PROTOCOL_VERSION, "cmd": cmd, "args": args}
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
        except BrokenPipeError:
            pass  # the daemon answered and closed early (a refusal): its reply is still there
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # closed with our request unread: a `busy` refusal
                break
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


# -- the command line --------------------------------------------------------------------------

JSON_HELP = "print the result as JSON (errors too: {ok, code, error}); anywhere on the line"


def _sub(sub: Any, name: str, help: str, *positional: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    # SUPPRESS: given after the command it sets ns.json; not given, the top-level value stays.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    for arg in positional:
        p.add_argument(arg, type=int if arg == "id" else str)
    return p


def _overrides(sub: Any) -> None:
    for name, what in (("pause", "observe only, act on nothing"),
                       ("silence", "act as usual, send no mail")):
        o = _sub(sub, name, f"{what} (a target, or every target)")
        o.add_argument("target", nargs="?")
        o.add_argument("--for", dest="for", default="1h", metavar="DURATION")
        o.add_argument("--reason", required=True)
    _sub(sub, "resume", "end pause and silence").add_argument("target", nargs="?")


def _safety(sub: Any) -> None:
    br = _sub(sub, "breaker", "circuit breakers: list, or reset TARGET [PLAN]")
    br.add_argument("action", choices=("list", "reset"), nargs="?", default="list")
    br.add_argument("target", nargs="?")
    br.add_argument("plan", nargs="?", default="deployment_rollback")
    kg = _sub(sub, "known-good", "the known-good ledger: list TARGET, mark-bad, unmark")
    kg.add_argument("action", choices=("list", "mark-bad", "unmark"))
    kg.add_argument("target")
    kg.add_argument("version", nargs="?")
    kg.add_argument("--reason")
    _sub(sub, "mark-bad", "never roll back to VERSION again", "target", "version") \
        .add_argument("--reason", required=True)
    _sub(sub, "unmark", "take the bad mark off VERSION", "target", "version")
    rb = _sub(sub, "rollback", "roll TARGET back now (checklist and verification included)",
              "target")
    rb.add_argument("--to", metavar="VERSION", help="a known-good version (default: the newest "
                    "known-good one older than the current)")
    rb.add_argument("--dry-run", action="store_true", help="show the plan and any gate; change "
                    "nothing")
    rb.add_argument("--force", action="store_true", help="past limits, cooldown, breaker, pause "
                    "or approval (recorded in the audit log and the incident)")
    rb.add_argument("--wait", action="store_true", help="wait until the incident closes; exit 1 "
                    "unless it is resolved")


def _emergency(sub: Any) -> None:
    _sub(sub, "unlock-admin", "clear an admin account's lockout", "target", "email")
    _sub(sub, "emergency-admin", "create an emergency admin; its one-time password is shown "
         "once", "target")
    lock = _sub(sub, "lockdown", "mass breach: lock every account but the emergency one "
                "(after approve ID)", "target")
    lock.add_argument("--reason")


def _drills(sub: Any) -> None:
    dr = _sub(sub, "drill", "recovery drill on a staging target: break it, time its recovery "
              "(waits for the result; exit 1 unless it passed)", "target")
    dr.add_argument("--scenario", action="append", metavar="SCENARIO", help="app_down, "
                    "auth_broken, data_corruption, perf_degraded or key_invalid; repeatable "
                    "(default: the target's configured scenarios)")
    dr.add_argument("--no-wait", action="store_true", help="start it and return its id")
    ds = _sub(sub, "drills", "drill schedules (overdue?) and recent drills, or one with --id")
    ds.add_argument("target", nargs="?")
    ds.add_argument("--id", type=int)
    ds.add_argument("--limit", type=int, default=10)


def _follow_drill(path: str, drill_id: int) -> dict[str, Any]:
    try:
        while True:
            reply = request(path, "drills", {"id": drill_id})
            if not reply.get("ok") or reply["result"]["state"] != "running":
                return reply
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\nstopped following; drill {drill_id} goes on: rollbackctl drills --id "
              f"{drill_id}", file=sys.stderr)
        raise SystemExit(130) from None


def _drill_text(cmd: str, result: Any) -> str | None:
    from rollbackd.daemon.drills.text import drill_text, drills_text

    if cmd == "drill" or (cmd == "drills" and "scenarios" in result):
        return drill_text(result)
    return drills_text(result) if cmd == "drills" else None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="rollbackctl", description="Steer a running rollbackd through its control "
               "socket. Exit status: 0 done, 1 refused by the daemon, 2 usage error, "
               "3 daemon unreachable.")
    p.add_argument("--socket", default=os.environ.get("ROLLBACKCTL_SOCKET", DEFAULT_SOCKET),
                   help="the control socket (default $ROLLBACKCTL_SOCKET or %(default)s)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--version", action="version", version=f"rollbackctl {version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _sub(sub, "status", "daemon, targets, open incidents, breakers, overrides")
    _sub(sub, "incidents", "recent incidents").add_argument("--limit", type=int, default=20)
    _sub(sub, "show", "one incident", "id").add_argument(
        "--report", action="store_true", help="the Markdown incident report")
    _sub(sub, "ack", "acknowledge an incident", "id")
    _overrides(sub)
    _sub(sub, "approve", "run the plan of a waiting incident, or resume a held one", "id")
    _sub(sub, "deny", "refuse the plan of a waiting incident", "id")
    _safety(sub)
    _sub(sub, "backup", "back TARGET up now", "target").add_argument(
        "--kind", choices=("database", "key", "sessions"))
    _sub(sub, "backups", "the backup catalog of TARGET", "target").add_argument(
        "--kind", choices=("database", "key", "sessions"))
    audit = _sub(sub, "audit", "recent control commands, or --verify the hash chain")
    audit.add_argument("--verify", action="store_true")
    audit.add_argument("--limit", type=int, default=20)
    _emergency(sub)
    _drills(sub)
    _sub(sub, "reload", "re-read the config file")
    _sub(sub, "help", "the commands the daemon knows")
    return p


def _request_of(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
    args = {k: v for k, v in vars(ns).items()
            if k not in ("socket", "json", "cmd", "wait", "no_wait") and v is not None}
    cmd = ns.cmd
    if cmd == "known-good" and ns.action != "list":  # `known-good mark-bad T V` = `mark-bad T V`
        if ns.version is None or (ns.action == "mark-bad" and not ns.reason):
            parser.error(f"known-good {ns.action} needs TARGET VERSION"
                         + (" and --reason" if ns.action == "mark-bad" else ""))
        cmd = ns.action
        args.pop("action")
    elif cmd == "audit" and not ns.verify:
        args.pop("verify")
    return cmd, args


def _wait(path: str, result: dict[str, Any]) -> dict[str, Any]:
    while True:
        reply = request(path, "show", {"id": result["id"]})
        if not reply.get("ok"):
            return reply
        if reply["result"]["state"] in CLOSED:
            return reply
        time.sleep(0.5)


def _fail(as_json: bool, code: str, message: str, status: int, label: str = "") -> int:
    if as_json:
        print(json.dumps({"ok": False, "code": code, "error": message}))
    else:
        print(f"{label}{message}", file=sys.stderr)
    return status


def _run(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    cmd, args = _request_of(ns, parser)
    try:
        reply = request(ns.socket, cmd, args)
        if reply.get("ok") and getattr(ns, "wait", False) and not ns.dry_run:
            reply = _wait(ns.socket, reply["result"])
            cmd = "show"
        elif reply.get("ok") and cmd == "drill" and not ns.no_wait:
            print(f"drill {reply['result']['id']} started on {ns.target}; following it "
                  f"(Ctrl-C stops following, not the drill) ...", file=sys.stderr, flush=True)
            reply = _follow_drill(ns.socket, reply["result"]["id"])
    except Unreachable as exc:
        return _fail(ns.json, "unreachable", str(exc), EXIT_UNREACHABLE, "rollbackctl: ")
    except (OSError, ValueError) as exc:
        return _fail(ns.json, "unreachable", f"{ns.socket}: {exc}", EXIT_UNREACHABLE,
                     "rollbackctl: ")
    if not reply.get("ok"):
        code = str(reply.get("code"))
        status = EXIT_USAGE if code in USAGE_CODES else EXIT_REFUSED
        return _fail(ns.json, code, str(reply.get("error")), status, f"{cmd}: ERROR ({code}) ")
    result: Any = reply.get("result")
    text = None if ns.json else _drill_text(cmd, result)
    print(json.dumps(result, indent=2, default=str) if ns.json else text or human(cmd, result))
    sys.stdout.flush()  # a closed pipe shows here, inside main, not at interpreter exit
    if cmd == "drill" and not ns.no_wait and result["state"] != "passed":
        return EXIT_REFUSED  # the drill ended, but not every scenario passed
    if getattr(ns, "wait", False) and cmd == "show" and result["state"] != "resolved":
        return EXIT_REFUSED  # --wait: the rollback ended, but not healthy
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        return _run(ns, parser)
    except UsageError as exc:
        return _fail("--json" in argv, "usage", str(exc), EXIT_USAGE)
    except BrokenPipeError:
        # The reader went away: nothing more to say, and nothing to flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
