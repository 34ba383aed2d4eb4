"""A container that boots systemd as PID 1 on the tests' Docker engine, and commands run in it.

Host network (only loopback traffic: the container's services listen on 127.0.0.1), no
--privileged: CAP_SYS_ADMIN, no seccomp/AppArmor profile, a tmpfs /run and the host's cgroup
file system (systemd sets up its own subtree under the container's cgroup).
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from tests.infra.services import ContainerRunner


class CommandFailed(AssertionError):
    pass


@dataclass
class Result:
    argv: list[str]
    rc: int
    out: str

    def check(self) -> Result:
        if self.rc != 0:
            raise CommandFailed(f"`{shlex.join(self.argv)}` exited {self.rc}:\n{self.out}")
        return self


class SystemdMachine:
    def __init__(self, runner: ContainerRunner, image: str) -> None:
        self.runner = runner
        self.image = image
        self.container: Container | None = None

    def boot(self, timeout: float = 60.0) -> SystemdMachine:
        # As a container manager must (systemd's CONTAINER_INTERFACE): / shared, so that mounts
        # systemd makes in a unit's namespace (credentials, for one) propagate. Then systemd is
        # PID 1 (exec).
        self.container = self.runner.run(
            self.image, ["/bin/sh", "-c", "mount --make-rshared / && exec /lib/systemd/systemd"],
            network_mode="host",
            cap_add=["SYS_ADMIN"],
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            tmpfs={"/run": "", "/run/lock": ""},
            cgroupns="host",
            volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            environment={"container": "docker"},
            stop_signal="SIGRTMIN+3",
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status != "running":
                raise AssertionError(f"the systemd container stopped ({self.container.status}):\n"
                                     + self.container.logs().decode(errors="replace")[-3000:])
            state = self.sh("systemctl is-system-running || true").out.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        if state != "running":
            failed = self.sh("systemctl --failed --no-legend; journalctl -b --no-pager | tail -40").out
            raise AssertionError(f"systemd in the container did not reach `running` "
                                 f"(state {state!r} after {timeout:.0f}s):\n{failed}")
        return self

    # -- commands ---------------------------------------------------------------------------------

    def run(self, *argv: str, user: str | None = None, env: Mapping[str, str] | None = None,
            workdir: str | None = None) -> Result:
        assert self.container is not None, "boot() first"
        rc, out = self.container.exec_run(list(argv), user=user or "", environment=dict(env or {}),
                                          workdir=workdir)
        return Result(list(argv), rc, out.decode(errors="replace"))

    def ok(self, *argv: str, **kwargs: Any) -> str:
        return self.run(*argv, **kwargs).check().out

    def sh(self, script: str) -> Result:
        return self.run("/bin/sh", "-c", script)

    def detach(self, *argv: str) -> None:
        assert self.container is not None
        self.container.exec_run(list(argv), detach=True)

    def as_user(self, user: str, *argv: str) -> Result:
        """argv as `user` (runuser: a fresh session-less login like a service's)."""
        return self.run("runuser", "-u", user, "--", *argv)

    # -- files ------------------------------------------------------------------------------------

    def put(self, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        """Write one file (parents must exist)."""
        assert self.container is not None
        blob = data.encode() if isinstance(data, str) else data
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(blob), mode, uid, gid, time.time()
            tar.addfile(info, io.BytesIO(blob))
        if not self.container.put_archive(str(Path(path).parent), buf.getvalue()):
            raise AssertionError(f"could not write {path} in the container")

    def put_tree(self, src: Path, dest: str) -> None:
        """Copy a host directory's files (not its owner) to dest, created if missing."""
        assert self.container is not None
        self.ok("mkdir", "-p", dest)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p in sorted(src.rglob("*")):
                info = tar.gettarinfo(str(p), arcname=str(p.relative_to(src)))
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if p.is_file():
                    with open(p, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        if not self.container.put_archive(dest, buf.getvalue()):
            raise AssertionError(f"could not copy {src} to {dest} in the container")

    def read(self, path: str) -> str:
        return self.ok("cat", path)

    # -- systemd ----------------------------------------------------------------------------------

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.ok("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, since: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-precise"]
        if unit:
            argv += ["-u", unit]
        if since:
            argv += ["--since", since]
        return self.run(*argv).out

    def wait(self, cond: Callable[[], Any], timeout: float, what: str,
             diagnose: Callable[[], str] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                extra = diagnose() if diagnose else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{extra}")
            time.sleep(0.2)
