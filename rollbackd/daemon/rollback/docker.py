"""docker rollback: the known-good image back under the container's name; the failed one kept."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import httpx

from rollbackd.daemon.rollback.base import (
    CHECK_ONLY,
    Effect,
    Process,
    StepContext,
    StepFailed,
    absent,
    done,
    unknown,
)
from rollbackd.daemon.rollback.deploy_settings import DockerDeployment
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec
from rollbackd.probes.docker_container import check_engine_socket

log = logging.getLogger("rollbackd.rollback.docker")
T = TypeVar("T")

# Container settings copied onto the container that replaces it ("HostConfig" is copied whole).
CONFIG_KEYS = ("Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr",
               "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "Volumes",
               "WorkingDir", "Entrypoint", "NetworkDisabled", "MacAddress", "OnBuild", "Labels",
               "StopSignal", "StopTimeout", "Shell", "ExposedPorts", "ArgsEscaped")
# Filled in from the image when the container was made: the new image brings its own.
IMAGE_DEFAULTS = ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck", "StopSignal",
                  "ExposedPorts", "Volumes", "OnBuild", "Shell", "ArgsEscaped")
BUILTIN_NETWORKS = ("host", "none", "bridge", "default", "")


def engine_time(stamp: str | None) -> datetime | None:
    """The engine's RFC 3339 time with nanoseconds ("2026-12-07T20:11:22.123456789Z")."""
    if not stamp or stamp.startswith("0001-"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]}+00:00")
    except ValueError:
        return None


def short(version: str | None) -> str:
    return (version or "?").removeprefix("sha256:")[:12]


def finished_at(container: dict[str, Any]) -> datetime | None:
    """When the container last stopped, as the engine says; None if it never did."""
    try:
        at = datetime.fromisoformat((container.get("State") or {}).get("FinishedAt") or "")
    except ValueError:
        return None
    return at if at.year > 1 else None  # the engine's zero time: it never stopped


def recreate_body(container: dict[str, Any], old_image: dict[str, Any] | None,
                  image: str) -> dict[str, Any]:
    """A create request for `image` with `container`'s own configuration, as `docker run` got it.

    Environment (env files included: the CLI inlines them), command, entry point, user, working
    directory, labels, ports, mounts, network mode and restart policy are kept; what only came
    from the old image's defaults is dropped, so the new image's own apply.
    """
    cfg = container.get("Config") or {}
    body = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    body["Image"] = image
    img = (old_image or {}).get("Config") or {}
    for key in IMAGE_DEFAULTS:
        # With the old image gone, its defaults cannot be told apart: take the new image's.
        if key in body and (old_image is None or body[key] == img.get(key)):
            del body[key]
    image_env = set(img.get("Env") or [])
    body["Env"] = [e for e in cfg.get("Env") or [] if e not in image_env]
    image_labels = img.get("Labels") or {}
    body["Labels"] = {k: v for k, v in (cfg.get("Labels") or {}).items()
                      if image_labels.get(k) != v}
    host = container.get("HostConfig") or {}
    mode = host.get("NetworkMode") or ""
    if mode == "host" or mode.startswith("container:") or \
            body.get("Hostname") == container.get("Id", "")[:12]:
        body.pop("Hostname", None)  # the engine's default, not a setting
    body["HostConfig"] = host
    networks = (container.get("NetworkSettings") or {}).get("Networks") or {}
    endpoints = {
        name: {"Aliases": [a for a in net.get("Aliases") or []
                           if a != container.get("Id", "")[:12]],
               "IPAMConfig": net.get("IPAMConfig"), "Links": net.get("Links")}
        for name, net in networks.items() if name == mode and mode not in BUILTIN_NETWORKS
    }
    if endpoints:
        body["NetworkingConfig"] = {"EndpointsConfig": endpoints}
    return body


def on_spare_port(body: dict[str, Any], s: DockerDeployment, of: str) -> dict[str, Any]:
    """The same create request, answering on the spare port, restarted by nobody."""
    assert s.spare_port is not None
    body = {**body, "Labels": {**body.get("Labels", {}), "org.rollbackd.candidate-of": of}}
    if s.port_env:
        env = [e for e in body.get("Env", []) if not e.startswith(f"{s.port_env}=")]
        body["Env"] = [*env, f"{s.port_env}={s.spare_port}"]
    host = dict(body.get("HostConfig") or {})
    host["RestartPolicy"] = {"Name": "no", "MaximumRetryCount": 0}
    if s.port is not None and host.get("PortBindings"):
        host["PortBindings"] = {
            port: [{**b, "HostPort": str(s.spare_port)} if b.get("HostPort") == str(s.port)
                   else b for b in binds or []]
            for port, binds in host["PortBindings"].items()
        }
    body["HostConfig"] = host
    return body


class DockerExecutor:
    component: ClassVar[Component] = Component.DEPLOYMENT
    backend: ClassVar[str] = "docker"

    def __init__(self, settings: DockerDeployment) -> None:
        self.settings = s = settings
        self.name = s.container
        self.candidate = f"{s.container}.candidate"
        self._api: Any = None
        import docker  # noqa: F401 - here, not first in a worker thread: racing imports break requests
        api, c = s.api_timeout, Component.DEPLOYMENT
        self.rollback_steps: tuple[StepSpec, ...] = (
            StepSpec("stop_failed_container", idempotent=True,
                     timeout=s.stop_timeout + 3 * api + 5, component=c),
            StepSpec("start_known_good", idempotent=True,
                     timeout=5 * api + s.start_grace + 5, component=c),
        )
        self.test_first_steps = (
            StepSpec("start_beside", idempotent=True, timeout=5 * api + 5, component=c),
            StepSpec("probe_beside", idempotent=True, timeout=s.probe_within + 2 * api + 5,
                     component=c),
            StepSpec("remove_beside", idempotent=True, timeout=2 * api + 5, component=c),
            *self.rollback_steps,
        )

    def capabilities(self) -> Capabilities:
        caps = {Capability.DEPLOYMENT_ROLLBACK: self.rollback_steps}
        if self.settings.spare_port is not None:
            caps[Capability.DEPLOYMENT_TEST_FIRST] = self.test_first_steps
        return caps

    # -- the engine: blocking SDK calls in a thread, every failure one plain sentence -----------

    def _client(self) -> Any:
        if self._api is None:
            import docker  # lazily: a daemon without docker targets never loads the SDK

            self._api = docker.APIClient(base_url=self.settings.docker_host, version="auto",
                                         timeout=self.settings.api_timeout)
        return self._api

    def _guarded(self, fn: Callable[[Any], T]) -> T:
        from docker.errors import APIError, DockerException
        from requests.exceptions import RequestException

        try:
            check_engine_socket(self.settings.docker_host, self.settings.api_timeout)
            return fn(self._client())
        except APIError as exc:
            raise StepFailed(f"docker engine refused: {exc.explanation or exc}") from None
        except (DockerException, RequestException, OSError) as exc:
            raise StepFailed(f"docker engine at {self.settings.docker_host} is not answering: "
                             f"{type(exc).__name__}") from None

    async def _call(self, fn: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self._guarded, fn)

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        def inspect(api: Any) -> dict[str, Any] | None:
            from docker.errors import NotFound

            try:
                return dict(api.inspect_container(name))
            except NotFound:
                return None

        return await self._call(inspect)

    async def _image(self, image: str) -> dict[str, Any] | None:
        def inspect(api: Any) -> dict[str, Any] | None:
            from docker.errors import ImageNotFound, NotFound

            try:
                return dict(api.inspect_image(image))
            except (ImageNotFound, NotFound):
                return None

        return await self._call(inspect)

    async def _logs(self, container: str) -> list[str]:
        n = self.settings.log_lines
        raw = await self._call(lambda api: api.logs(container, tail=n) if n else b"")
        return [line[:500] for line in raw.decode(errors="replace").splitlines()[-n:]] if n else []

    async def _named(self, prefix: str) -> list[dict[str, Any]]:
        found = await self._call(lambda api: api.containers(all=True, filters={"name": prefix}))
        return [c for c in found if any(n.lstrip("/").startswith(prefix) for n in c["Names"])]

    # -- the executor protocol -------------------------------------------------------------

    async def current_version(self) -> str | None:
        try:
            found = await self._inspect(self.name)
        except StepFailed as exc:
            log.debug("container=%s version=unknown reason=%s", self.name, exc)
            return None
        return found["Image"] if found else None

    async def image(self, ref: str) -> dict[str, Any] | None:
        """The engine's inspection of an image (None: not on the engine). Raises StepFailed."""
        return await self._image(ref)

    async def process(self) -> Process:
        try:
            c = await self._inspect(self.name)
        except StepFailed as exc:
            return Process(None, None, f"container {self.name}: {exc}")
        if c is None:
            return Process(False, None, f"no container named {self.name}")
        state = c.get("State") or {}
        what = f"container {self.name} ({c['Id'][:12]})"
        if not state.get("Running") or state.get("Restarting"):
            return Process(False, None, f"{what} is {state.get('Status', 'not running')}")
        started = engine_time(state.get("StartedAt"))
        age = (datetime.now(UTC) - started).total_seconds() if started else None
        return Process(True, None if age is None else max(0.0, age), what)

    async def evidence(self) -> dict[str, Any]:
        try:
            c = await self._inspect(self.name)
            if c is None:
                return {"container": self.name, "state": "missing"}
            state, host = c.get("State") or {}, c.get("HostConfig") or {}
            image = await self._image(c["Image"])
            return {
                "container": self.name, "id": c["Id"][:12], "image": c["Image"],
                "image_tags": (image or {}).get("RepoTags") or [],
                "state": state.get("Status"), "exit_code": state.get("ExitCode"),
                "error": state.get("Error") or None, "restart_count": c.get("RestartCount"),
                "health": (state.get("Health") or {}).get("Status"),
                "started_at": state.get("StartedAt"), "finished_at": state.get("FinishedAt"),
                "restart_policy": (host.get("RestartPolicy") or {}).get("Name"),
                "network_mode": host.get("NetworkMode"),
                "env_keys": sorted(e.split("=", 1)[0] for e in c["Config"].get("Env") or []),
                "mounts": [f"{m.get('Source') or m.get('Name')}:{m.get('Destination')}"
                           for m in c.get("Mounts") or []],
                "logs": await self._logs(c["Id"]),
            }
        except StepFailed as exc:
            return {"container": self.name, "error": str(exc)}

    async def backup_current(self, ctx: StepContext) -> str:
        c = await self._inspect(self.name)
        if c is None:
            return f"no container named {self.name}: nothing to keep"
        return (f"container {self.name} ({c['Id'][:12]}, image {short(c['Image'])}) is kept: "
                f"renamed {self.name}.failed.<time> and stopped when replaced, never deleted")

    async def verify_target(self, ctx: StepContext) -> str:
        target = ctx.target_of(Component.DEPLOYMENT)
        image = await self._image(target)
        if image is None:
            raise StepFailed(f"rollback target image {short(target)} is not on the docker engine "
                             "(deleted?)")
        tags = ", ".join(image.get("RepoTags") or []) or "untagged"
        return f"image {short(target)} ({tags}) is on the engine"

    async def run_step(self, name: str, ctx: StepContext) -> str:
        steps = {"stop_failed_container": self._stop_failed, "start_known_good": self._start,
                 "start_beside": self._start_beside, "probe_beside": self._probe_beside,
                 "remove_beside": self._remove_beside}
        if name not in steps:
            raise StepFailed(f"docker executor has no step {name!r}")
        return await steps[name](ctx)

    # -- after a crash: did the step's effect happen? -----------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name == "stop_failed_container":
            return await self._stopped_effect(ctx, since)
        if name == "start_known_good":
            target = ctx.target_of(Component.DEPLOYMENT)
            c = await self._inspect(self.name)
            if c is None:
                return absent(f"no container is named {self.name}")
            running = bool((c.get("State") or {}).get("Running"))
            if c["Image"] == target and running:
                return done(f"the container named {self.name} runs image {short(target)}")
            return unknown(f"the container named {self.name} has image {short(c['Image'])} and "
                           f"is {'running' if running else 'not running'}; the target is "
                           f"{short(target)}")
        if name == "start_beside":
            target = ctx.target_of(Component.DEPLOYMENT)
            c = await self._inspect(self.candidate)
            if c is None:
                return absent(f"no container {self.candidate}")
            running = bool((c.get("State") or {}).get("Running"))
            if c["Image"] != target:
                # The step only makes candidates of the target: one of another release was left
                # by an abandoned plan, and the step replaces it. Found done, the plan would
                # probe the leftover and swap to the target untested.
                return absent(f"{self.candidate} {'runs' if running else 'has'} image "
                              f"{short(c['Image'])}, not the target {short(target)}: left by "
                              "another plan")
            if running:
                return done(f"{self.candidate} runs image {short(c['Image'])}")
            return unknown(f"{self.candidate} exists but is not running")
        if name == "remove_beside":
            if await self._inspect(self.candidate) is None:
                return done(f"no container {self.candidate} is left")
            return absent(f"{self.candidate} is still there")
        return CHECK_ONLY

    async def _stopped_effect(self, ctx: StepContext, since: datetime) -> Effect:
        target, failed = ctx.target_of(Component.DEPLOYMENT), ctx.plan.current_version
        c = await self._inspect(self.name)
        if c is not None and c["Image"] == target:
            return done(f"the container named {self.name} has the target image {short(target)}")
        running = c is not None and bool((c.get("State") or {}).get("Running"))
        if c is not None and running:
            return absent(f"{self.name} still runs image {short(c['Image'])}")
        if c is not None:
            ended = finished_at(c)
            if ended is not None and ended < since:
                # A crashed container exits by itself: the step never stopped it, and renaming
                # a stopped container again is what the step does anyway.
                return absent(f"{self.name} (image {short(c['Image'])}) exited by itself at "
                              f"{ended:%H:%M:%S} UTC, before the step began, and is not kept "
                              "under a .failed. name yet")
            return unknown(f"{self.name} (image {short(c['Image'])}) is stopped but was not "
                           "kept under a .failed. name")
        kept = [k for k in await self._named(f"{self.name}.failed.")
                if failed is None or k["ImageID"] == failed]
        if kept and all(k.get("State") != "running" for k in kept):
            newest = max(k["Names"][0].lstrip("/") for k in kept)
            return done(f"no container is named {self.name}; the failed one is kept stopped as "
                        f"{newest}")
        return unknown(f"no container is named {self.name} and no stopped {self.name}.failed.* "
                       f"with image {short(failed)} is there")

    # -- steps -------------------------------------------------------------------------------

    async def _stop_failed(self, ctx: StepContext) -> str:
        target = ctx.target_of(Component.DEPLOYMENT)
        c = await self._inspect(self.name)
        if c is None:
            return f"no container named {self.name}: nothing to stop"
        if c["Image"] == target:
            return f"{self.name} already runs the target {short(target)}"
        kept = f"{self.name}.failed.{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        t = int(self.settings.stop_timeout)

        def stop_and_keep(api: Any) -> None:
            api.stop(c["Id"], timeout=t)
            # A stopped "always" container comes back when the engine restarts: not this one.
            api.update_container(c["Id"], restart_policy={"Name": "no"})
            api.rename(c["Id"], kept)

        await self._call(stop_and_keep)
        return (f"stopped {self.name} ({c['Id'][:12]}, image {short(c['Image'])}) and kept it "
                f"as {kept}")

    async def _start(self, ctx: StepContext) -> str:
        target = ctx.target_of(Component.DEPLOYMENT)
        c = await self._inspect(self.name)
        if c is not None and c["Image"] != target:
            raise StepFailed(f"{self.name} now runs {short(c['Image'])}, neither the failed "
                             f"version nor the target: someone deployed meanwhile")
        if c is not None:
            how = f"{self.name} ({c['Id'][:12]}) already had the target image"
        elif (prev := await self._previous(target)) is not None:
            await self._call(lambda api: api.rename(prev["Id"], self.name))
            how = f"the previous container {prev['Names'][0].lstrip('/')} is {self.name} again"
        else:
            how = await self._recreate(ctx, target)
        running = await self._call(lambda api: api.inspect_container(self.name))
        if not running["State"].get("Running"):
            await self._call(lambda api: api.start(self.name))
        await self._still_running(self.name)
        return f"{how}; running image {short(target)}"

    async def _previous(self, target: str) -> dict[str, Any] | None:
        """A container a deploy kept that runs the target: the configured name first."""
        kept = [c for c in await self._named(f"{self.name}.") if c["ImageID"] == target
                and ".failed." not in c["Names"][0] and ".candidate" not in c["Names"][0]]
        kept.sort(key=lambda c: (c["Names"][0].lstrip("/") != self.settings.previous,
                                 -c["Created"]))
        return kept[0] if kept else None

    async def _recreate(self, ctx: StepContext, target: str) -> str:
        failed = sorted(await self._named(f"{self.name}.failed."),
                        key=lambda c: (c["ImageID"] == ctx.plan.current_version, c["Names"][0]))
        if not failed:
            raise StepFailed(f"no container to take {self.name}'s configuration from: neither "
                             f"{self.name} nor {self.name}.failed.* exists")
        source = await self._call(lambda api: api.inspect_container(failed[-1]["Id"]))
        old_image = await self._image(source["Image"])
        body = recreate_body(source, old_image, target)
        await self._call(lambda api: api.create_container_from_config(body, name=self.name))
        source_name = source["Name"].lstrip("/")
        note = "" if old_image else " (its image is gone: the target image's defaults apply)"
        return f"recreated {self.name} from {source_name}'s configuration{note}"

    async def _still_running(self, name: str) -> None:
        await asyncio.sleep(self.settings.start_grace)
        c = await self._inspect(name)
        state = (c or {}).get("State") or {}
        if not state.get("Running") or state.get("Restarting"):
            logs = " | ".join((await self._logs(name))[-3:]) if c else ""
            raise StepFailed(f"{name} is {state.get('Status', 'gone')} (exit "
                             f"{state.get('ExitCode')}) {self.settings.start_grace:g}s after "
                             f"its start: {logs or 'no output'}")

    async def _start_beside(self, ctx: StepContext) -> str:
        target = ctx.target_of(Component.DEPLOYMENT)
        cand = await self._inspect(self.candidate)
        if cand is not None and cand["Image"] == target and cand["State"].get("Running"):
            return f"{self.candidate} already runs {short(target)}"
        await self._remove_beside(ctx)
        current = await self._inspect(self.name)
        if current is None:
            raise StepFailed(f"no container named {self.name} to take the configuration from")
        body = on_spare_port(recreate_body(current, await self._image(current["Image"]), target),
                             self.settings, self.name)
        await self._call(lambda api: api.create_container_from_config(body, name=self.candidate))
        await self._call(lambda api: api.start(self.candidate))
        return f"started {self.candidate} ({short(target)}) on port {self.settings.spare_port}"

    async def _probe_beside(self, ctx: StepContext) -> str:
        s = self.settings
        url = f"http://{s.probe_host}:{s.spare_port}{s.probe_path}"
        deadline = time.monotonic() + s.probe_within
        streak, slowest, last = 0, 0.0, "no answer yet"
        timeout = min(s.probe_within, 2 * s.probe_max_latency if s.probe_max_latency else 5.0)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as http:
            while streak < s.probe_successes and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    code = (await http.get(url)).status_code
                    took = time.monotonic() - sent
                    good = code == s.probe_expect_status and (
                        s.probe_max_latency is None or took <= s.probe_max_latency)
                    last = f"HTTP {code} in {took * 1000:.0f} ms"
                except httpx.HTTPError as exc:
                    good, took, last = False, 0.0, f"{type(exc).__name__}"
                streak, slowest = (streak + 1, max(slowest, took)) if good else (0, 0.0)
                if not good:
                    await asyncio.sleep(0.2)
        if streak < s.probe_successes:
            logs = " | ".join((await self._logs(self.candidate))[-3:])
            await self._remove_beside(ctx)
            raise StepFailed(f"the candidate {short(ctx.plan.target_version)} did not pass at "
                             f"{url} within {s.probe_within:g}s (last: {last}); removed it; "
                             f"logs: {logs or 'none'}")
        return (f"the candidate answered {url} {streak} times in a row, slowest in "
                f"{slowest * 1000:.0f} ms")

    async def _remove_beside(self, ctx: StepContext) -> str:
        def remove(api: Any) -> bool:
            from docker.errors import NotFound

            try:
                api.remove_container(self.candidate, force=True)
                return True
            except NotFound:
                return False

        return f"removed {self.candidate}" if await self._call(remove) else "no candidate to remove"
