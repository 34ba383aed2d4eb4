"""The demo's Docker part: find a reachable engine, build two tiny images locally (nothing is
pulled), run the good one on 127.0.0.1 with host networking, and remove everything after."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import uuid
from pathlib import Path
from typing import Any

from rollbackd.daemon.demo.workspace import free_port

ENGINES = ("/var/run/docker.sock", "/run/rollbackd-test/docker.sock")
"""Where the demo looks for an engine after $DOCKER_HOST: the usual socket, then the one the
test suite's private dockerd (scripts/services) listens on."""
BUSYBOX = Path("/bin/busybox")
LABEL = "org.rollbackd.demo"
REPOSITORY = "rollbackd-demo/web"
APPLETS = ("sh", "httpd", "printf", "echo", "sleep", "cat", "test", "[", "kill")
# sh stays PID 1 and ends on SIGTERM at once (a bare httpd as PID 1 ignores it: a stop would
# wait out the stop timeout).
RUN = ("#!/bin/sh\nhttpd -f -p 127.0.0.1:${PORT:?} -h /www &\n"
       "trap 'kill $!; exit 0' TERM INT\nwait $!\n")
HEALTH = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok v1\\n'\n"
CRASH = ("#!/bin/sh\necho 'starting web v2'\n"
         "echo 'FATAL: settings module web_settings is missing' >&2\nexit 1\n")
IMAGES = {"v1": {"app/run": RUN, "www/cgi-bin/health": HEALTH}, "v2": {"app/run": CRASH}}


def _reachable(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
        return True
    except OSError:
        return False


def find_engine(explicit: str | None = None) -> tuple[str | None, str]:
    """(docker_host URL, None) of an engine that answers a ping, or (None, why not)."""
    looked: list[str] = []
    candidates = [explicit] if explicit else [os.environ.get("DOCKER_HOST", ""),
                                              *(f"unix://{p}" for p in ENGINES)]
    for url in [c for c in candidates if c]:
        looked.append(url)
        if url.startswith("unix://") and not _reachable(url.removeprefix("unix://")):
            continue
        try:
            import docker  # lazily: the demo without Docker never loads the SDK

            client = docker.DockerClient(base_url=url, timeout=10)
            try:
                client.ping()
            finally:
                client.close()
        except Exception:  # noqa: BLE001 - any failure means: not this engine
            continue
        return url, ""
    return None, f"no Docker engine (looked at {', '.join(looked) or 'nothing'})"


def static_busybox() -> str | None:
    """Why the images cannot be built here, or None: they need a static /bin/busybox."""
    try:
        head = BUSYBOX.read_bytes()[:4096]
    except OSError:
        return f"no {BUSYBOX} to build a local image from (apt-get install busybox-static)"
    if not head.startswith(b"\x7fELF") or b"ld-linux" in head or b"ld-musl" in head:
        return f"{BUSYBOX} is not statically linked (apt-get install busybox-static)"
    return None


def rootfs(files: dict[str, str]) -> bytes:
    """A root file system: static busybox, a few applets linked to it, and `files`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        dirs = {"bin", "tmp", "etc"} | {str(Path(n).parent) for n in files}
        for d in sorted(dirs | {str(Path(d).parent) for d in dirs} - {"."}):
            add(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/:/bin/sh\n")
        for name, text in sorted(files.items()):
            add(name, tarfile.REGTYPE, 0o755, text.encode())
    return buf.getvalue()


class DemoDocker:
    """The demo's web app in a container on the engine at `host`."""

    def __init__(self, host: str) -> None:
        import docker

        self.host = host
        self.client: Any = docker.DockerClient(base_url=host, timeout=60)
        self.run_id = uuid.uuid4().hex[:6]
        self.name = f"rollbackd-demo-{self.run_id}-web"
        self.port = free_port()
        self.tags: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cgi-bin/health"

    def image(self, version: str) -> str:
        return f"{REPOSITORY}:{self.run_id}-{version}"  # one demo never untags another's

    def build(self) -> None:
        for version, files in IMAGES.items():
            tag = self.image(version)
            self.client.api.import_image_from_data(
                rootfs(files), repository=REPOSITORY, tag=tag.rsplit(":", 1)[1],
                changes=[f"ENTRYPOINT {json.dumps(['/app/run'])}", f"LABEL {LABEL}=1"])
            self.tags.append(tag)

    def start(self) -> None:
        self.client.containers.run(self.image("v1"), name=self.name, detach=True,
                                   network_mode="host", environment={"PORT": str(self.port)},
                                   restart_policy={"Name": "no"}, labels={LABEL: "1"})

    def cleanup(self) -> None:
        """Every container of this demo (the app, .previous, .failed.*), then its images."""
        from docker.errors import DockerException

        try:
            # By name: a container the rollback recreated has only the labels it was run with.
            for c in self.client.containers.list(all=True, filters={"name": self.name}):
                if c.name == self.name or c.name.startswith(self.name + "."):
                    c.remove(force=True)
            for tag in self.tags:
                try:
                    self.client.images.remove(tag, force=True)
                except DockerException:
                    pass
            # What lost its tag while a container still used it (never another demo's: tagged).
            self.client.images.prune(filters={"dangling": True, "label": LABEL})
        finally:
            self.client.close()

    def target_toml(self) -> str:
        return f"""
[targets.web]
staging = true

[targets.web.deployment]
kind = "docker"
container = "{self.name}"
docker_host = "{self.host}"
stop_timeout = "2s"

[targets.web.probes.health]
kind = "http_health"
url = "{self.url}"
interval = "500ms"
timeout = "1s"
failure_threshold = 3

[targets.web.probes.container]
kind = "docker_container"
container = "{self.name}"
docker_host = "{self.host}"
interval = "500ms"
failure_threshold = 2

[targets.web.drills]
timeout = "60s"

[targets.web.drills.injectors]
app_down = {{ builtin = "docker_image", image = "{self.image('v2')}" }}
"""
