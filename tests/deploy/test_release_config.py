"""Releases carry their config, on real parts: the sample app's env file (which its restart
reads), a config file and a secret file are recorded as v1 earns known-good, changed with a
broken v2, and put back byte for byte with v1's code before the restart. Secret values are
sealed in the journal, and no value appears in any mail, report, `show` or log line."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from rollbackd.daemon.demo.workspace import Workspace
from tests.conftest import DaemonProcess, SmtpSink, known_good, wait_for

pytestmark = pytest.mark.e2e

V1 = {"API_TOKEN": "tok-v1-9f8e7d6c5b4a", "db_password": "pw-v1-4b3a2c1d0e",
      "smtp": "smtp-v1-55aa66bb77"}
V2 = {"API_TOKEN": "tok-v2-0a1b2c3d4e5f", "db_password": "pw-v2-ffeeddccbb",
      "smtp": "smtp-v2-1122334455"}


def files(ws: Workspace) -> tuple[Path, Path, Path]:
    return ws.env_file, ws.root / "grading.toml", ws.root / "smtp.secret"


def write_v1(ws: Workspace) -> None:
    env, toml, secret = files(ws)
    env.write_text(env.read_text() + f"FEATURE_MODE=classic\nAPI_TOKEN={V1['API_TOKEN']}\n")
    toml.write_text(f'title = "grading"\n# who we are\ndb_password = "{V1["db_password"]}"\n')
    secret.write_text(V1["smtp"] + "\n")


def write_v2(ws: Workspace) -> None:
    env, toml, secret = files(ws)
    text = env.read_text().replace("FEATURE_MODE=classic", "FEATURE_MODE=new")
    env.write_text(text.replace(V1["API_TOKEN"], V2["API_TOKEN"]) + "NEW_FLAG=1\n")
    toml.write_text(toml.read_text().replace(V1["db_password"], V2["db_password"]))
    secret.write_text(V2["smtp"] + "\n")


def config(ws: Workspace, smtp: SmtpSink, secrets: str = "encrypt", all_files: bool = True
           ) -> str:
    env, toml, secret = files(ws)
    keys = f"env_files = [{json.dumps(str(env))}]\nconfig_secrets = \"{secrets}\"\n"
    if all_files:
        keys += (f"config_files = [{json.dumps(str(toml))}]\n"
                 f"secret_files = [{json.dumps(str(secret))}]\n")
    head = '[targets.grading.deployment]\nkind = "git"\n'
    return ws.config_toml(smtp.port).replace(head, head + keys)


def secret_values(ws: Workspace) -> list[str]:
    return [*V1.values(), *V2.values(), ws.env()["DB_ENCRYPTION_KEY"]]


def journal_bytes(d: DaemonProcess) -> bytes:
    return b"".join(p.read_bytes() for p in d.state_dir.glob("journal.sqlite3*"))


def recorded(d: DaemonProcess, version: str) -> list[dict[str, Any]] | None:
    with closing(d.db()) as db:
        row = db.execute("SELECT files FROM release_config WHERE version = ?",
                         (version,)).fetchone()
    return None if row is None else list(json.loads(row[0]))


def mail_text(msg: Any) -> str:
    parts = [p.get_payload(decode=True).decode() for p in msg.walk()
             if p.get_content_type() in ("text/plain", "text/html")]
    return str(msg["Subject"]) + "\n" + "\n".join(parts)


def settled(d: DaemonProcess, state: str) -> dict[str, Any] | None:
    incidents = d.result("incidents")
    return incidents[0] if incidents and incidents[0]["state"] == state else None


def start(ws: Workspace, smtp: SmtpSink, start_daemon: Any, **kw: Any) -> tuple[DaemonProcess,
                                                                                 str]:
    write_v1(ws)
    ws.start()
    d = start_daemon(config(ws, smtp, **kw))
    good = ws.head()
    wait_for(lambda: known_good(d, good) and recorded(d, good), 20, "v1 known-good, recorded")
    return d, good


def test_env_and_config_files_go_back_with_the_code(workspace: Workspace, smtp: SmtpSink,
                                                    start_daemon: Any) -> None:
    ws = workspace
    d, good = start(ws, smtp, start_daemon)
    before = {p: p.read_bytes() for p in files(ws)}

    # At rest: sealed. No secret value is in the journal's files, yet the key opens them.
    stored = journal_bytes(d)
    for value in [*V1.values(), ws.env()["DB_ENCRYPTION_KEY"]]:
        assert value.encode() not in stored
    key = (d.state_dir / "config.key")
    assert key.stat().st_mode & 0o777 == 0o600
    tokens = [p[2] for f in recorded(d, good) or [] for p in f["parts"] if p[0] == "s"]
    opened = sorted(Fernet(key.read_bytes().strip()).decrypt(t.encode()).decode() for t in tokens)
    # DATABASE_URL too: a URL may carry a password (secret_names ends in URL$).
    assert opened == sorted([ws.env()["DB_ENCRYPTION_KEY"], ws.env()["DATABASE_URL"],
                             V1["API_TOKEN"], f'"{V1["db_password"]}"', V1["smtp"] + "\n"])
    toml_parts = next(f["parts"] for f in recorded(d, good) or [] if f["kind"] == "config")
    assert ["t", '"grading"'] in toml_parts  # what is not secret is kept as written

    write_v2(ws)
    bad = ws.deploy_broken()
    inc = wait_for(lambda: settled(d, "resolved"), 60, f"resolved\n{d.log_text()}")

    # Exactly v1's bytes are back, the code too, and the app runs on them.
    assert {p: p.read_bytes() for p in files(ws)} == before
    assert ws.head() == good and bad != good
    show = d.result("show", id=inc["id"])
    names = [s["name"] for s in show["steps"]]
    assert names[names.index("git_checkout"):] == [
        "git_checkout", "install_dependencies", "restore_config", "restart_service", "verify"]
    step = next(s for s in show["steps"] if s["name"] == "restore_config")
    env, toml, secret = files(ws)
    assert step["state"] == "done"
    assert step["detail"] == (
        f"config of {good[:12]}: {env} put back (keys changed back: FEATURE_MODE, API_TOKEN, "
        f"NEW_FLAG (removed: added since)); {toml} put back (keys changed back: db_password); "
        f"{secret} put back (keys changed back: smtp.secret)")

    # The key names are in the report and the resolved mail; no value is anywhere.
    report = (d.state_dir / "reports" / f"incident-{inc['id']}.md").read_text()
    assert "FEATURE_MODE, API_TOKEN" in report
    wait_for(lambda: any("resolved" in s for s in smtp.subjects), 15, "resolved mail")
    mails = [mail_text(m) for _, m in smtp.messages]
    done = next(m for m in mails if "resolved" in m.splitlines()[0])
    assert "Config put back with the code" in done and "API_TOKEN" in done
    # The first mail's suspects name the keys that differ from the recorded config.
    how = f"compared with the config recorded with known-good {good[:12]}; values not shown"
    for line in (f"[env] FEATURE_MODE changed in {env} ({how})",
                 f"[env] API_TOKEN changed in {env} ({how})",
                 f"[env] NEW_FLAG added in {env} ({how})",
                 f"[env] db_password changed in {toml} ({how})"):
        assert line in mails[0], mails[0]
    seen = "\n".join([*mails, report, json.dumps(show), d.log_text()])
    for value in secret_values(ws):
        assert value not in seen, value
    after = journal_bytes(d)
    for value in secret_values(ws):
        assert value.encode() not in after, value


def test_fingerprint_only_holds_until_the_value_is_back(workspace: Workspace, smtp: SmtpSink,
                                                       start_daemon: Any) -> None:
    ws = workspace
    d, good = start(ws, smtp, start_daemon, secrets="fingerprint", all_files=False)
    before = ws.env_file.read_bytes()
    assert all(p[2] is None for f in recorded(d, good) or [] for p in f["parts"] if p[0] == "s")

    write_v2(ws)
    bad = ws.deploy_broken()
    changed = ws.env_file.read_bytes()
    inc = wait_for(lambda: settled(d, "held"), 60, f"held\n{d.log_text()}")
    show = d.result("show", id=inc["id"])
    held = show["held_reason"]
    assert f"API_TOKEN in {ws.env_file}: only its fingerprint was recorded" in held
    assert "Nothing was changed" in held
    assert [(s["name"], s["state"]) for s in show["steps"]][-1] == ("verify_target", "failed")
    # Held before anything changed: the code and the file are as the deploy left them.
    assert (ws.head(), ws.env_file.read_bytes()) == (bad, changed)
    for value in secret_values(ws):
        assert value.encode() not in journal_bytes(d), value

    # A person puts the token back (the flag and the new key stay wrong): the rest follows.
    ws.env_file.write_text(ws.env_file.read_text().replace(V2["API_TOKEN"], V1["API_TOKEN"]))
    d.result("approve", id=inc["id"])
    wait_for(lambda: settled(d, "resolved"), 60, f"resolved\n{d.log_text()}")
    assert (ws.head(), ws.env_file.read_bytes()) == (good, before)
    step = next(s for s in d.result("show", id=inc["id"])["steps"]
                if s["name"] == "restore_config")
    assert step["detail"] == (f"config of {good[:12]}: {ws.env_file} put back (keys changed "
                              "back: FEATURE_MODE, NEW_FLAG (removed: added since))")


@pytest.mark.parametrize("point", ["ROLLBACKD_CRASH_AT_STEP", "ROLLBACKD_CRASH_AFTER_STEP"])
def test_kill9_in_restore_config_is_checked_by_the_files_hashes(
        workspace: Workspace, smtp: SmtpSink, start_daemon: Any, point: str) -> None:
    """kill -9 right as restore_config is journaled running (nothing written: its effect is
    absent, held, approved, run) or right after it wrote the files (their hashes are the
    recorded ones: done, and the plan goes on by itself to the restart)."""
    ws = workspace
    write_v1(ws)
    ws.start()
    text = config(ws, smtp).replace("[daemon]\n", "[daemon]\ntest_hooks = true\n")
    d = start_daemon(text, env={point: "restore_config"})
    good = ws.head()
    wait_for(lambda: known_good(d, good) and recorded(d, good), 20, "v1 known-good, recorded")
    before = {p: p.read_bytes() for p in files(ws)}
    write_v2(ws)
    changed = {p: p.read_bytes() for p in files(ws)}
    ws.deploy_broken()
    assert d.proc is not None
    assert d.proc.wait(60) == -9
    after_crash = {p: p.read_bytes() for p in files(ws)}
    assert after_crash == (changed if point == "ROLLBACKD_CRASH_AT_STEP" else before)

    d.env.pop(point)
    d.start()
    inc = d.result("incidents")[0]
    if point == "ROLLBACKD_CRASH_AT_STEP":
        wait_for(lambda: settled(d, "held"), 20, f"held\n{d.log_text()}")
        d.result("approve", id=inc["id"])
    wait_for(lambda: settled(d, "resolved"), 60, f"resolved\n{d.log_text()}")
    assert {p: p.read_bytes() for p in files(ws)} == before
    assert ws.head() == good
    steps = d.result("show", id=inc["id"])["steps"]
    config_steps = [(s["state"], s["detail"]) for s in steps if s["name"] == "restore_config"]
    if point == "ROLLBACKD_CRASH_AFTER_STEP":
        assert len(config_steps) == 1 and config_steps[0][0] == "done"
        assert config_steps[0][1].startswith("found done after restart")
        assert "every recorded config file (3) has its recorded content" in config_steps[0][1]
    else:
        assert [s for s, _ in config_steps] == ["interrupted", "done"]
    assert [s["name"] for s in steps if s["state"] == "done"].count("restart_service") == 1
