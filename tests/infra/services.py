"""Helpers for tests that talk to real servers: the private Docker engine and local images.

`scripts/services` (run by `scripts/test`) installs and starts what these need. Nothing here ever
skips a test: a missing part is an error that says how to get it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

DOCKER_SOCKET = "/run/rollbackd-test/docker.sock"
"""The private dockerd that scripts/services starts (--bridge=none --iptables=false ...)."""

BUSYBOX = Path("/bin/busybox")
"""Debian's busybox-static: one static binary, the whole userland of the test images."""

FINGERPRINT_LABEL = "org.rollbackd.test.fingerprint"
"""Label of every image build_local_image makes: a hash of its content."""
CONTAINER_LABEL = "org.rollbackd.test.run"
"""Label of every container a ContainerRunner starts: the runner's own id."""
_IMAGE_FORMAT = "1"  # bump to rebuild every cached image


class ServiceUnavailable(RuntimeError):
    """A real part the tests need is not there. Tests fail on it; they never skip."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def docker_client(socket_path: str = DOCKER_SOCKET, timeout: int = 60) -> docker.DockerClient:
    """A docker SDK client for the tests' private dockerd, checked with a ping."""
    # A plain connect first: the SDK leaks its socket when the connect fails.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(socket_path)
    except OSError as exc:
        raise ServiceUnavailable(_docker_hint(socket_path, exc)) from exc
    try:
        client = docker.DockerClient(base_url=f"unix://{socket_path}", version="auto", timeout=timeout)
    except (DockerException, OSError) as exc:
        raise ServiceUnavailable(_docker_hint(socket_path, exc)) from exc
    try:
        client.ping()
    except (DockerException, OSError) as exc:
        client.close()
        raise ServiceUnavailable(_docker_hint(socket_path, exc)) from exc
    return client


def _docker_hint(socket_path: str, exc: BaseException) -> str:
    return (f"dockerd is not answering on {socket_path} ({type(exc).__name__}: {exc}). "
            f"Run scripts/services (as root) to install and start it; scripts/test does that first.")


def _busybox_applets() -> list[str]:
    if not BUSYBOX.is_file():
        raise ServiceUnavailable(f"{BUSYBOX} is missing: run scripts/services (it installs busybox-static)")
    out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in out.split() if name and "/" not in name and name != "busybox"})


def _normalize(path: str) -> str:
    parts = PurePosixPath("/", path).parts[1:]
    if not parts or ".." in parts:
        raise ValueError(f"image file path must name a file inside the image: {path!r}")
    return "/".join(parts)


def _rootfs_tar(files: Mapping[str, bytes]) -> bytes:
    """A root file system: busybox with its applets as symlinks in /bin, plus `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = {"bin", "etc", "tmp", "proc", "sys", "dev", "root", "var"}
        for name in files:
            parent = PurePosixPath(name).parent
            while str(parent) != ".":
                dirs.add(str(parent))
                parent = parent.parent

        def add(name: str, *, kind: bytes, mode: int, data: bytes = b"", target: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
            info.linkname = target
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in sorted(dirs):
            add(d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        add("bin/busybox", kind=tarfile.REGTYPE, mode=0o755, data=BUSYBOX.read_bytes())
        for applet in _busybox_applets():
            if f"bin/{applet}" not in files:
                add(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, target="busybox")
        defaults = {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
                    "etc/group": b"root:x:0:\nnogroup:x:65534:\n"}
        for name, data in sorted({**defaults, **files}.items()):
            add(name, kind=tarfile.REGTYPE, mode=0o755 if data.startswith(b"#!") else 0o644, data=data)
    return buf.getvalue()


def build_local_image(tag: str, files: Mapping[str, bytes | str], entrypoint: list[str], *,
                      client: docker.DockerClient | None = None) -> str:
    """Make a tiny image locally (`docker import`; nothing is pulled) and return its tag.

    The root file system is Debian's static busybox (every applet linked in /bin, so `/bin/sh`
    works) plus `files` ({"www/index.html": "hi"}; text is UTF-8; content starting with "#!" is
    executable). The image is cached by tag: an image with this tag and the same content
    (fingerprint label) is reused, otherwise it is rebuilt. Example, an HTTP server::

        tag = build_local_image("rollbackd-test/httpd:1", {"www/index.html": "ok"},
                                ["/bin/busybox", "httpd", "-f", "-h", "/www"])
        runner.run(tag, ["-p", f"127.0.0.1:{port}"])   # command is appended to the entrypoint
    """
    blobs = {_normalize(k): v.encode() if isinstance(v, str) else bytes(v) for k, v in files.items()}
    digest = hashlib.sha256()
    digest.update(_IMAGE_FORMAT.encode())
    digest.update(hashlib.sha256(BUSYBOX.read_bytes()).digest() if BUSYBOX.is_file() else b"")
    digest.update(json.dumps(entrypoint).encode())
    for name, data in sorted(blobs.items()):
        digest.update(f"\0{name}\0{len(data)}\0".encode())
        digest.update(data)
    fingerprint = digest.hexdigest()

    own = client is None
    cli = docker_client() if client is None else client
    try:
        old_id = None
        try:
            image = cli.images.get(tag)
            if (image.labels or {}).get(FINGERPRINT_LABEL) == fingerprint:
                return tag
            old_id = image.id
        except ImageNotFound:
            pass
        repository, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        changes = [f"ENTRYPOINT {json.dumps(entrypoint)}", f"LABEL {FINGERPRINT_LABEL}={fingerprint}"]
        cli.api.import_image_from_data(_rootfs_tar(blobs), repository=repository, tag=version,
                                       changes=changes)
        image = cli.images.get(tag)
        if (image.labels or {}).get(FINGERPRINT_LABEL) != fingerprint:
            raise RuntimeError(f"docker import of {tag} did not produce the expected image")
        if old_id and old_id != image.id:
            prune_images(cli)
        return tag
    finally:
        if own:
            cli.close()


def prune_images(client: docker.DockerClient) -> None:
    """Remove the images build_local_image made that lost their tag and no container uses."""
    client.images.prune(filters={"dangling": True, "label": FINGERPRINT_LABEL})


class ContainerRunner:
    """Runs test containers (host network by default) and removes every one it ran."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.run_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"

    def run(self, image: str, command: list[str] | str | None = None, **kwargs: Any) -> Container:
        """`client.containers.run(..., detach=True)` with `network_mode="host"` and our label."""
        kwargs.setdefault("network_mode", "host")
        kwargs["labels"] = {**kwargs.get("labels", {}), CONTAINER_LABEL: self.run_id}
        return self.client.containers.run(image, command, detach=True, **kwargs)

    def containers(self) -> list[Container]:
        """Every container this runner started that still exists, running or not."""
        label = f"{CONTAINER_LABEL}={self.run_id}"
        return list(self.client.containers.list(all=True, filters={"label": label}))

    def remove_all(self) -> None:
        """Remove every container this runner started, then our images that lost their tag."""
        for container in self.containers():
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
        prune_images(self.client)

    def __enter__(self) -> ContainerRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove_all()


def iter_pg_bindirs() -> Iterator[Path]:
    """/usr/lib/postgresql/*/bin holding a server (pg_ctl, initdb, postgres), newest first."""
    root = Path("/usr/lib/postgresql")
    versions = [p for p in root.iterdir() if p.name.replace(".", "").isdigit()] if root.is_dir() else []
    candidates = [p / "bin" for p in versions]
    for bindir in sorted(candidates, key=lambda p: [int(x) for x in p.parent.name.split(".")], reverse=True):
        if all(os.access(bindir / exe, os.X_OK) for exe in ("pg_ctl", "initdb", "postgres")):
            yield bindir


def pg_ctl_path() -> Path:
    """The newest pg_ctl under /usr/lib/postgresql/*/bin, or ServiceUnavailable."""
    for bindir in iter_pg_bindirs():
        return bindir / "pg_ctl"
    raise ServiceUnavailable("no PostgreSQL server under /usr/lib/postgresql/*/bin "
                             "(pg_ctl, initdb, postgres): run scripts/services (it installs postgresql)")


REDIS_SERVER = Path("/usr/bin/redis-server")


def redis_server_path() -> Path:
    if not os.access(REDIS_SERVER, os.X_OK):
        raise ServiceUnavailable(f"{REDIS_SERVER} is missing: run scripts/services "
                                 "(it installs redis-server)")
    return REDIS_SERVER
