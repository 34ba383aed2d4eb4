"""The shipped unit files, checked by systemd's own tools on this host.

`systemd-analyze verify` checks that a unit's command exists, so it verifies a copy of each unit
whose ExecStart names this checkout's venv instead of /opt/rollbackd/venv (that line and nothing
else differs, which the test asserts), with every drop-in example installed beside it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
VENV_BIN = Path(sys.executable).parent
EXEC = "/opt/rollbackd/venv/bin/rollbackd"
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) (\S+)")
FAILED_CHECK = re.compile(r"^✗ (\S+)\s.*?\s(\d+\.\d+)\s*$", re.M)


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: run scripts/services (it installs systemd)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def with_local_exec(src: Path, dest: Path, old: str, new: str) -> Path:
    """src copied to dest with ExecStart's program `old` replaced by `new`; asserts that the
    ExecStart line is the only difference."""
    text = src.read_text()
    lines = text.splitlines()
    changed = [line.replace(f"ExecStart={old}", f"ExecStart={new}", 1) for line in lines]
    diff = [(a, b) for a, b in zip(lines, changed, strict=True) if a != b]
    assert len(diff) == 1 and diff[0][0].startswith(f"ExecStart={old}"), diff
    dest.write_text("\n".join(changed) + "\n")
    return dest


def install_tree(tmp: Path, sudo: bool = False) -> Path:
    """rollbackd.service, its drop-in examples as drop-ins (the sudo one only if `sudo`), and the
    example app unit."""
    units = tmp / "system"
    (units / "rollbackd.service.d").mkdir(parents=True)
    rollbackd = VENV_BIN / "rollbackd"
    assert rollbackd.is_file(), f"{rollbackd}: install the project into the venv (scripts/test)"
    with_local_exec(UNITS / "rollbackd.service", units / "rollbackd.service", EXEC, str(rollbackd))
    for example in sorted((UNITS / "rollbackd.service.d").glob("*.conf.example")):
        if sudo or "sudo" not in example.name:
            shutil.copy(example, units / "rollbackd.service.d" / example.name.removesuffix(".example"))
    with_local_exec(UNITS / "examples" / "grading.service", units / "grading.service",
                    "/opt/grading/venv/bin/python", sys.executable)
    return units


def test_shipped_files_are_all_checked() -> None:
    shipped = sorted(str(p.relative_to(UNITS)) for p in UNITS.rglob("*") if p.is_file())
    assert shipped == [
        "README.md",
        "examples/grading.service",
        "polkit/50-rollbackd-restart-grading.rules",
        "rollbackd.service",
        "rollbackd.service.d/credentials.conf.example",
        "rollbackd.service.d/docker.conf.example",
        "rollbackd.service.d/targets.conf.example",
        "rollbackd.service.d/zz-sudo.conf.example",
        "rollbackd.sysusers.conf",
        "rollbackd.tmpfiles.conf",
        "sudoers.d/rollbackd",
    ], "a new file in systemd/ needs a check here (or in test_booted.py)"


@pytest.mark.parametrize("sudo", [False, True], ids=["drop-ins", "drop-ins+sudo"])
def test_systemd_analyze_verify_passes(tmp_path: Path, sudo: bool) -> None:
    units = install_tree(tmp_path, sudo)
    for unit in ("rollbackd.service", "grading.service"):
        proc = systemd_analyze("verify", "--man=no", str(units / unit))
        # verify exits 0 on unknown keys and bad values, printing a warning: both must be empty.
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
            f"systemd-analyze verify {unit} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is real: a typo or a missing program is reported."""
    units = install_tree(tmp_path)
    unit = units / "rollbackd.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomme=yes"))
    proc = systemd_analyze("verify", "--man=no", str(unit))
    assert "Unknown key name 'ProtectHomme'" in proc.stderr or "Unknown key 'ProtectHomme'" in proc.stderr
    missing = with_local_exec(UNITS / "rollbackd.service", tmp_path / "rollbackd.service", EXEC,
                              str(tmp_path / "no-such-rollbackd"))
    proc = systemd_analyze("verify", "--man=no", str(missing))
    assert proc.returncode != 0 and "no-such-rollbackd is not executable" in proc.stderr, proc.stderr


def exposure(unit: Path) -> tuple[float, str]:
    proc = systemd_analyze("security", "--offline=true", "--no-pager", str(unit))
    found = EXPOSURE.search(proc.stdout)
    assert found, f"no overall exposure in systemd-analyze security's output:\n{proc.stdout}{proc.stderr}"
    return float(found.group(2)), proc.stdout


def test_exposure_is_ok_or_better(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` on the shipped unit: 2.5 ("OK") or lower."""
    score, out = exposure(UNITS / "rollbackd.service")
    failed = "\n".join(f"  {name} {weight}" for name, weight in FAILED_CHECK.findall(out))
    print(f"\nsystemd-analyze security --offline=true systemd/rollbackd.service: {score}")
    assert score <= 2.5, f"exposure {score} > 2.5; the checks that fail:\n{failed}"
    # Only the settings the unit documents as deliberately unset (they would break a feature).
    names = {name for name, _ in FAILED_CHECK.findall(out)}
    assert names <= {
        "PrivateNetwork=", "IPAddressDeny=", "PrivateUsers=", "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)", "SystemCallFilter=~@privileged",
        "RootDirectory=/RootImage=", "DeviceAllow=",
    }, failed


def test_exposure_stays_ok_with_the_drop_in_examples(tmp_path: Path) -> None:
    units = install_tree(tmp_path)
    score, out = exposure(units / "rollbackd.service")
    assert score <= 2.5, out


def test_the_sudo_drop_in_costs_what_it_says(tmp_path: Path) -> None:
    """The sudo alternative undoes the hardening; its comment gives the price: about 7."""
    units = install_tree(tmp_path, sudo=True)
    score, out = exposure(units / "rollbackd.service")
    assert 6.5 <= score <= 7.5, out
    assert "1.4 (OK) to about 7 (MEDIUM)" in (UNITS / "rollbackd.service.d/zz-sudo.conf.example").read_text()


def test_sysusers_and_tmpfiles(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles apply the shipped files to an empty root."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    subprocess.run(["systemd-sysusers", f"--root={root}", str(UNITS / "rollbackd.sysusers.conf")],
                   check=True, capture_output=True)
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line.split(":") for line in passwd.splitlines() if line.startswith("rollbackd:"))
    assert entry[5:] == ["/var/lib/rollbackd", "/usr/sbin/nologin"], entry
    assert 0 < int(entry[2]) < 1000, "a system user"
    proc = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                           str(UNITS / "rollbackd.tmpfiles.conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path, mode, uid in [("var/lib/rollbackd", 0o700, int(entry[2])),
                            ("var/log/rollbackd", 0o750, int(entry[2])),
                            ("etc/rollbackd", 0o755, 0), ("etc/credstore", 0o700, 0)]:
        st = (root / path).stat()
        assert (st.st_mode & 0o7777, st.st_uid) == (mode, uid), path
