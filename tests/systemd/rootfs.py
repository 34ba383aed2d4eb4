"""A Debian root file system that boots systemd in a container, and the wheels to install there.

`systemd_image()` makes it with debootstrap from Debian's packages, from the mirror this machine's
apt uses (its sources.list / sources.list.d entries; its proxy, if apt has one), imports it with
`docker import` and caches it: the image by tag and fingerprint label, the root file system as a
tarball under the cache directory, both keyed by a hash of the package list. Nothing is pulled.

`wheelhouse()` holds every wheel rollbackd needs, pinned to the versions of the test venv and
completed for the container's Python (its environment markers, not the host's).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.infra.services import FINGERPRINT_LABEL, ServiceUnavailable

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "libpam-systemd", "dbus",  # PID 1, journal, logind, the system bus
    "polkitd",                                             # systemctl restart by the rollbackd user
    "sudo",                                                # visudo checks systemd/sudoers.d
    "python3", "python3-venv", "git", "acl",               # rollbackd, its git backend, setfacl
)
_FORMAT = "2"  # bump to rebuild: changes to the build or clean-up below
# Timers that would reach outside (apt's mirror) or touch the host's disks (fstrim, e2scrub):
# masked, the test containers send nothing beyond 127.0.0.1.
_MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
           "e2scrub_all.timer", "fstrim.timer")
_CLEAN = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
          "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*")

# What packaging.markers.default_environment() says, computed by the container's python3.
MARKER_ENV_SCRIPT = """\
import json, os, platform, sys
impl = sys.implementation
v = impl.version
iv = f"{v.major}.{v.minor}.{v.micro}"
if v.releaselevel != "final":
    iv += v.releaselevel[0] + str(v.serial)
print(json.dumps({
    "implementation_name": impl.name, "implementation_version": iv, "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}))
"""


def cache_dir() -> Path:
    """$ROLLBACKD_TEST_CACHE, else $XDG_CACHE_HOME/rollbackd-test, else ~/.cache/rollbackd-test."""
    base = os.environ.get("ROLLBACKD_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rollbackd-test")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time across test runs (two pytest processes, or xdist workers)."""
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ServiceUnavailable(f"{what}: {argv[0]} is missing ({exc}); run scripts/services") from exc
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        raise ServiceUnavailable(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n"
                                 + "\n".join(out[-25:]))
    return proc


# -- the Debian mirror, as apt-get sees it ------------------------------------------------------

def _apt_config(*pairs: str) -> dict[str, str]:
    """`apt-config shell` for NAME KEY pairs: {NAME: value} for those apt has a value for."""
    out = _run(["apt-config", "shell", *pairs], "apt-config").stdout
    found = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        found[name] = value.strip("'\"")
    return found


def _deb822(text: str) -> Iterator[dict[str, str]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields and fields.get("enabled", "yes").lower() != "no":
            yield fields


def _one_line(text: str) -> Iterator[dict[str, str]]:
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        options = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
        yield {"types": m.group(1), "uris": m.group(3), "suites": m.group(4),
               "components": m.group(5), "signed-by": options.get("signed-by", "")}


def apt_sources() -> list[dict[str, str]]:
    """Every enabled entry of apt's sources.list and sources.list.d (both formats), in order."""
    conf = _apt_config("SL", "Dir::Etc::sourcelist/f", "SP", "Dir::Etc::sourceparts/d")
    files: list[Path] = []
    if conf.get("SL"):
        files.append(Path(conf["SL"]))
    parts = Path(conf.get("SP") or "/etc/apt/sources.list.d")
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    entries: list[dict[str, str]] = []
    for f in files:
        if f.is_file():
            text = f.read_text(errors="replace")
            entries += _deb822(text) if f.suffix == ".sources" else _one_line(text)
    return entries


def debian_mirror() -> tuple[str, str | None]:
    """(mirror URL, keyring or None) of the first `deb` entry of apt that serves Debian `main`
    for a release suite (not -security, -updates or -backports): what debootstrap should use."""
    candidates = []
    for e in apt_sources():
        if "deb" not in e.get("types", "").split() or "main" not in e.get("components", "").split():
            continue
        suites = e.get("suites", "").split()
        if not any("-" not in s and "/" not in s for s in suites):
            continue
        for uri in e.get("uris", "").split():
            keyring = e.get("signed-by") or None
            if keyring and not keyring.startswith("/"):
                keyring = None  # an inline key block: debootstrap takes files only
            candidates.append((SUITE not in suites, uri.rstrip("/"), keyring))
    if not candidates:
        raise ServiceUnavailable("no Debian mirror in apt's sources (a `deb` entry with component "
                                 "main and a release suite); debootstrap needs one")
    _, uri, keyring = min(candidates, key=lambda c: c[0])
    return uri, keyring


# -- the image -----------------------------------------------------------------------------------

def fingerprint() -> str:
    spec = {"format": _FORMAT, "suite": SUITE, "variant": VARIANT,
            "packages": sorted(PACKAGES), "clean": _CLEAN, "masked": _MASKED}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def image_tag() -> str:
    return f"rollbackd-test/systemd-{SUITE}:{fingerprint()[:12]}"


def _debootstrap(target: Path, log: Path) -> None:
    if os.geteuid() != 0:
        raise ServiceUnavailable("debootstrap needs root (the tests run as root under scripts/test)")
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        raise ServiceUnavailable("debootstrap is missing: run scripts/services (it installs it)")
    mirror, keyring = debian_mirror()
    env = dict(os.environ)
    proxy = _apt_config("P", "Acquire::http::Proxy", "S", "Acquire::https::Proxy")
    if proxy.get("P"):
        env["http_proxy"] = proxy["P"]
    if proxy.get("S"):
        env["https_proxy"] = proxy["S"]
    argv = ["debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
    if keyring:
        argv.append(f"--keyring={keyring}")
    argv += [SUITE, str(target), mirror]
    started = time.monotonic()
    with open(log, "w") as out:
        out.write(f"# {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        detail = target / "debootstrap" / "debootstrap.log"
        if detail.exists():
            tail += ["-- debootstrap.log --", *detail.read_text(errors="replace").splitlines()[-20:]]
        raise ServiceUnavailable(f"debootstrap of {SUITE} from {mirror} failed (exit "
                                 f"{proc.returncode}; log {log}):\n" + "\n".join(tail))
    with open(log, "a") as out:
        out.write(f"# debootstrap took {time.monotonic() - started:.0f}s\n")


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A directory for the build, on a fresh tmpfs when possible: dpkg fsyncs every file it
    unpacks, which makes debootstrap on a disk twice as slow."""
    base = Path(tempfile.mkdtemp(prefix="rollbackd-rootfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs", str(base)],
                             capture_output=True).returncode == 0
    try:
        yield base
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(base)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _build_tarball(tarball: Path) -> None:
    with _scratch() as scratch:
        root = scratch / "root"
        _debootstrap(root, cache_dir() / "debootstrap.log")
        for pattern in _CLEAN:
            for p in root.glob(pattern):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        (root / "etc" / "machine-id").write_text("")  # a fresh one at each boot
        for unit in _MASKED:
            mask = root / "etc" / "systemd" / "system" / unit
            mask.unlink(missing_ok=True)
            mask.symlink_to("/dev/null")
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--acls", "-cf",
              str(partial), "."], "tar of the root file system")
        partial.replace(tarball)
    for old in tarball.parent.glob("rootfs-*.tar"):
        if old != tarball:
            old.unlink()


def systemd_image(client: docker.DockerClient) -> str:
    """The tag of a local image of Debian with systemd as its init; built on first use."""
    tag = image_tag()
    fp = fingerprint()
    with _locked("rootfs"):
        try:
            if (client.images.get(tag).labels or {}).get(FINGERPRINT_LABEL) == fp:
                return tag
        except ImageNotFound:
            pass
        tarball = cache_dir() / f"rootfs-{SUITE}-{fp[:16]}.tar"
        if not tarball.exists():
            _build_tarball(tarball)
        repository, _, version = tag.rpartition(":")
        changes = [f"LABEL {FINGERPRINT_LABEL}={fp}", "ENV container=docker",
                   'CMD ["/lib/systemd/systemd"]']
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version,
                                          changes=changes)
        if (client.images.get(tag).labels or {}).get(FINGERPRINT_LABEL) != fp:
            raise RuntimeError(f"docker import of {tarball} did not produce {tag}")
        for image in client.images.list(name=repository):  # earlier package lists
            for old in image.tags:
                if old != tag:
                    with contextlib.suppress(APIError):  # still used by a container
                        client.images.remove(old)
        return tag


# -- the wheels ----------------------------------------------------------------------------------

def _pip(*args: str, what: str) -> None:
    _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], what)


def project_wheel(dest: Path) -> Path:
    """rollbackd's own wheel, built from this checkout (`pip wheel --no-deps`)."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip("wheel", "--no-deps", "-q", "-w", str(dest), str(ROOT), what="pip wheel of rollbackd")
    wheels = sorted(dest.glob("rollbackd-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one rollbackd wheel in {dest}, found {wheels}")
    return wheels[0]


def _metadata(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def _missing(root: Path, wheels: Path, env: dict[str, str]) -> list[Requirement]:
    """Requirements of root's closure (markers evaluated for `env`) with no wheel in `wheels`."""
    have = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in wheels.glob("*.whl")}
    have[canonicalize_name(parse_wheel_filename(root.name)[0])] = root
    todo: list[tuple[str, frozenset[str]]] = [(canonicalize_name(parse_wheel_filename(root.name)[0]),
                                               frozenset({"demo"}))]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing: dict[str, Requirement] = {}
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in _metadata(have[name]):
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))
            if not wanted:
                continue
            dep = canonicalize_name(req.name)
            if dep in have:
                todo.append((dep, frozenset(req.extras)))
            else:
                missing.setdefault(dep, req)
    return list(missing.values())


def wheelhouse(root_wheel: Path, env: dict[str, str]) -> Path:
    """A directory with a wheel for every dependency of root_wheel, for the Python of `env`.

    Versions are those of the test venv (`pip freeze` as constraints); packages only the target
    Python needs (markers such as python_full_version < "3.11.3") are added at their newest
    version. Cached by a hash of the constraints, rollbackd's declared dependencies and `env`.
    """
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    constraints = "".join(line + "\n" for line in freeze.splitlines()
                          if line and not line.startswith(("#", "-")))
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([constraints, declared, env], sort_keys=True).encode())
    house = cache_dir() / f"wheels-{key.hexdigest()[:16]}"
    with _locked("wheels"):
        if (house / ".complete").exists() and not _missing(root_wheel, house, env):
            return house
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir()
        (house / "constraints.txt").write_text(constraints)
        cons = str(house / "constraints.txt")
        # [demo]: the sample app's packages, which its own venv installs from this house too.
        _pip("wheel", "-q", "-w", str(house), "-c", cons, f"{root_wheel}[demo]",
             what="pip wheel of rollbackd's dependencies")
        for p in house.glob("rollbackd-*.whl"):
            p.unlink()  # the project's wheel is built afresh for every run
        for _ in range(10):
            missing = _missing(root_wheel, house, env)
            if not missing:
                break
            _pip("wheel", "-q", "--no-deps", "-w", str(house), "-c", cons,
                 *[f"{r.name}{r.specifier}" for r in missing],
                 what="pip wheel of dependencies the container's Python needs")
        else:
            raise RuntimeError(f"wheelhouse {house} stays incomplete: {missing}")
        (house / ".complete").write_text("")
        for old in cache_dir().glob("wheels-*"):
            if old != house and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return house
