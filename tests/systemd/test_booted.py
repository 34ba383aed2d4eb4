"""rollbackd under a real systemd (PID 1 in a local Debian container): the shipped units as an
administrator installs them, READY=1, the watchdog, and a git + service rollback through
`systemctl restart` with the polkit rule as the only privilege.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.systemd.install import CREDENTIALS, REPO, SMTP_PASSWORD, SMTP_USER, Installed

# The first test also boots the container: on a cold cache that includes debootstrap (~1 min).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) ")


def test_rollbackd_is_active_after_ready_with_its_sandbox(installed: Installed) -> None:
    m = installed.m
    svc = m.show("rollbackd.service", "ActiveState", "SubState", "Type", "NotifyAccess",
                 "StatusText", "WatchdogUSec", "MainPID", "User", "NRestarts", "Result")
    # Type=notify: `systemctl start` returned and the unit is active only after READY=1.
    assert (svc["Type"], svc["ActiveState"], svc["SubState"]) == ("notify", "active", "running"), svc
    assert svc["NotifyAccess"] == "main" and svc["WatchdogUSec"] == "30s", svc
    assert svc["StatusText"], f"no STATUS= from the daemon: {svc}"
    assert svc["NRestarts"] == "0" and svc["Result"] == "success", svc
    pid = svc["MainPID"]

    # The daemon runs as rollbackd, without capabilities, no new privileges, seccomp on.
    status = m.read(f"/proc/{pid}/status")
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    uid = m.ok("id", "-u", "rollbackd").strip()
    assert fields["Uid"].split()[0] == uid, fields["Uid"]
    assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0, fields
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", fields

    # Secrets came as credentials: the bare name resolved in $CREDENTIALS_DIRECTORY.
    listing = m.ok("ls", "-l", CREDENTIALS)
    assert "smtp-password" in listing and "login-probe-password" in listing, listing
    assert "database-dsn" not in listing  # declared, no file in /etc/credstore: skipped

    # The running unit (shipped file + the drop-in) as systemd applies it: still 2.5 or lower.
    out = m.run("systemd-analyze", "security", "--no-pager", "rollbackd.service").out
    found = EXPOSURE.search(out)
    assert found and float(found.group(1)) <= 2.5, out[-3000:]

    # The control socket: root and members of group rollbackd; nobody else.
    status = installed.ctl("status")
    assert status["pid"] == int(pid) and [t["target"] for t in status["targets"]] == ["grading"]
    m.ok("useradd", "--system", "--no-create-home", "-G", "rollbackd", "operator1")
    m.ok("useradd", "--system", "--no-create-home", "outsider1")
    assert installed.ctl("status", user="operator1")["pid"] == int(pid)
    refused = m.as_user("outsider1", "rollbackctl", "status")
    assert refused.rc == 3 and "permission denied" in refused.out.lower(), refused

    # The polkit rule allows exactly one thing: restarting grading.service.
    for verb, unit in [("stop", "grading.service"), ("restart", "dbus.service"),
                       ("restart", "rollbackd.service")]:
        r = m.as_user("rollbackd", "systemctl", "--no-ask-password", verb, unit)
        assert r.rc != 0 and re.search(r"(?i)access denied|authentication required", r.out), r


def test_broken_deploy_is_rolled_back_with_systemctl_restart(installed: Installed) -> None:
    m, v1 = installed.m, installed.v1
    m.wait(lambda: any(e["version"] == v1 and e["state"] == "known-good"
                       for e in installed.ctl("known-good", "list", "grading")),
           30, "v1 known-good", lambda: m.journal("rollbackd.service")[-3000:])

    # A deploy that cannot start: committed on the branch, restarted by the deployer (root).
    app = f"{REPO}/app.py"
    text = m.read(app)
    head, sep, rest = text.partition("from __future__ import annotations\n")
    m.put("/tmp/app.py", head + sep + 'raise SystemExit("grading_settings is missing")\n' + rest)
    m.as_user("rollbackd", "cp", "/tmp/app.py", app).check()
    installed.git("commit", "-q", "-am", "v2: settings from grading_settings")
    v2 = installed.git("rev-parse", "HEAD")
    m.ok("systemctl", "restart", "grading.service")

    def resolved() -> dict | None:
        incidents = installed.ctl("incidents")
        return incidents[0] if incidents and incidents[0]["state"] == "resolved" else None

    inc = m.wait(resolved, 90, "the incident to be resolved",
                 lambda: m.journal("rollbackd.service")[-4000:] + m.journal("grading.service")[-2000:])
    show = installed.ctl("show", str(inc["id"]))
    assert show["incident_class"] == "app_down"
    assert (show["from_version"], show["to_version"]) == (v2, v1)
    steps = {s["name"]: s["state"] for s in show["steps"]}
    assert steps["git_checkout"] == "done" and steps["restart_service"] == "done", show["steps"]
    assert steps["verify"] == "done", show["steps"]

    # The app runs v1 again, as its own user, restarted by systemd on rollbackd's request.
    assert installed.app_health() == 200
    assert installed.git("rev-parse", "HEAD") == v1 and installed.git("rev-parse", "main") == v2
    app_pid = m.show("grading.service", "MainPID")["MainPID"]
    assert m.ok("stat", "-c", "%U", f"/proc/{app_pid}").strip() == "grading"
    # git wrote v1's files with the daemon's UMask=0077; the default ACL lets the app read them.
    acl = m.ok("getfacl", "-p", app)
    assert re.search(r"^group:grading:r\S*\s*(#effective:r--)?$", acl, re.M), acl
    assert m.ok("stat", "-c", "%a %U", app).strip() == "640 rollbackd"  # 0600 without the ACL
    polkit = m.journal("polkit.service")
    assert not re.search(r"(?i)error|denied", polkit), polkit

    # Mail went out through SMTP AUTH with the password from the systemd credential.
    m.wait(lambda: len(installed.smtp.messages) >= 2, 30, "two mails")
    assert (SMTP_USER, SMTP_PASSWORD) in installed.smtp.logins
    assert any("resolved" in s for s in installed.smtp.subjects), installed.smtp.subjects


def test_the_sudoers_alternative_works_only_with_its_drop_in(installed: Installed) -> None:
    """systemd/sudoers.d/rollbackd inside rollbackd's own sandbox: a oneshot copy of the installed
    unit (same hardening, same drop-ins) whose command is the sudo restart argv."""
    m = installed.m
    src = "/root/rollbackd/systemd"
    m.ok("visudo", "-c", "-f", f"{src}/sudoers.d/rollbackd")
    m.ok("install", "-m", "0440", f"{src}/sudoers.d/rollbackd", "/etc/sudoers.d/rollbackd")
    unit = "/etc/systemd/system/sudo-restart.service"
    m.sh(f"sed -e 's|^ExecStart=.*|ExecStart=/usr/bin/sudo -n /usr/bin/systemctl restart "
         f"grading.service|' -e 's|^Type=notify|Type=oneshot|' -e '/^WatchdogSec=/d' "
         f"-e '/^ExecReload=/d' -e '/^Restart/d' -e '/^RuntimeDirectory/d' "  # not rollbackd's socket dir
         f"/etc/systemd/system/rollbackd.service >{unit} && "
         f"cp -r /etc/systemd/system/rollbackd.service.d {unit}.d").check()
    try:
        app_pid = m.show("grading.service", "MainPID")["MainPID"]
        m.ok("systemctl", "daemon-reload")
        refused = m.run("systemctl", "start", "sudo-restart.service")
        assert refused.rc != 0, refused
        assert "no new privileges" in m.journal("sudo-restart.service")
        assert m.show("grading.service", "MainPID")["MainPID"] == app_pid

        m.ok("cp", f"{src}/rollbackd.service.d/zz-sudo.conf.example", f"{unit}.d/zz-sudo.conf")
        m.ok("systemctl", "daemon-reload")
        m.ok("systemctl", "start", "sudo-restart.service")
        assert m.show("grading.service", "MainPID")["MainPID"] not in ("0", app_pid)
        m.wait(lambda: installed.app_health() == 200, 30, "the app after the sudo restart")
    finally:
        m.sh(f"rm -rf /etc/sudoers.d/rollbackd {unit} {unit}.d && systemctl daemon-reload").check()


def test_frozen_event_loop_is_restarted_by_the_watchdog_and_the_journal_survives(
    installed: Installed,
) -> None:
    m = installed.m
    before = m.show("rollbackd.service", "MainPID", "NRestarts")
    rows = installed.journal_rows()
    assert rows["ledger"], "the journal should hold the ledger by now"
    since = m.ok("date", "+%Y-%m-%d %H:%M:%S").strip()

    frozen_at = time.monotonic()
    frozen_wall = float(m.ok("date", "+%s.%N"))
    installed.request("freeze", seconds=120)  # blocks the event loop; WATCHDOG=1 stops

    def restarted() -> dict[str, str] | None:
        now = m.show("rollbackd.service", "MainPID", "NRestarts", "ActiveState", "SubState")
        ok = (int(now["NRestarts"]) > int(before["NRestarts"]) and now["ActiveState"] == "active"
              and now["MainPID"] not in ("0", before["MainPID"]))
        return now if ok else None

    after = m.wait(restarted, 75, "systemd to restart the frozen daemon",
                   lambda: m.journal("rollbackd.service", since)[-4000:])
    back_after = time.monotonic() - frozen_at
    log = m.journal("rollbackd.service", since)
    assert re.search(r"rollbackd\.service: Watchdog timeout \(limit 30s\)!", log), log[-3000:]
    assert "status=6/ABRT" in log, log[-3000:]
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1

    # The time line, from the journal's own clock: freeze -> watchdog timeout -> ready again.
    unix = m.run("journalctl", "--no-pager", "-o", "short-unix", "-u", "rollbackd.service",
                 "--since", since).out
    stamps: dict[str, float] = {}
    for line in unix.splitlines():
        for key, needle in (("timeout", "Watchdog timeout"), ("ready", "Started rollbackd")):
            if needle in line and key not in stamps:
                stamps[key] = float(line.split()[0])
    timeout_after, ready_after = stamps["timeout"] - frozen_wall, stamps["ready"] - frozen_wall
    print(f"\nwatchdog: freeze -> watchdog timeout {timeout_after:.1f}s -> READY=1 again "
          f"{ready_after:.1f}s (seen by the test after {back_after:.1f}s)")
    # systemd gives up WatchdogSec after the last WATCHDOG=1, which came at most WatchdogSec/2
    # before the freeze; then RestartSec=5s and a start.
    assert 15 - 1 <= timeout_after <= 30 + 1, timeout_after
    assert 5 <= ready_after - timeout_after <= 5 + 15, stamps
    installed.timings.update(watchdog_timeout=timeout_after, watchdog_ready=ready_after)

    # Nothing journaled before the hang was lost: incidents, their steps and timeline, the
    # known-good ledger and the hash-chained audit log are all still there.
    survived = installed.journal_rows()
    for table in ("incidents", "steps", "ledger"):
        ids_before = {r[0] for r in rows[table]}
        assert ids_before <= {r[0] for r in survived[table]}, table
    for table in ("timeline", "audit"):  # append-only: the very same rows
        assert survived[table][:len(rows[table])] == rows[table], table
    verified = installed.ctl("audit", "--verify")
    assert verified["verified"] and verified["rows"] >= len(rows["audit"]), verified
    for inc in rows["incidents"]:
        assert installed.ctl("show", str(inc[0]))["id"] == inc[0]
    status = installed.ctl("status")
    assert status["pid"] == int(after["MainPID"]) and status["uptime"] < back_after
