"""Built-in injector for a docker deployment: the container replaced by one of `image`.

As a deploy tool does it: the running container is stopped and kept as `<name>.previous`, and
a container of the drill's image takes its name with the same configuration (environment,
mounts, network, restart policy). Nothing is pulled: the image must be on the engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rollbackd.daemon.drills.injector_base import DrillError, InjectContext
from rollbackd.daemon.rollback.deploy_settings import DockerDeployment
from rollbackd.daemon.rollback.docker import recreate_body, short


class DockerImage:
    def __init__(self, ctx: InjectContext) -> None:
        dep = ctx.config.deployment
        if not isinstance(dep, DockerDeployment):
            raise DrillError("builtin docker_image needs a docker deployment "
                             f"([targets.{ctx.target}.deployment] kind = \"docker\")")
        assert ctx.settings.image is not None
        self.ctx, self.dep, self.image = ctx, dep, ctx.settings.image
        self.image_id: str | None = None

    def _api(self) -> Any:
        import docker  # lazily: a daemon without docker targets never loads the SDK

        return docker.APIClient(base_url=self.dep.docker_host, version="auto",
                                timeout=int(self.dep.api_timeout))

    def _deploy(self) -> str:
        from docker.errors import DockerException, NotFound

        name, previous = self.dep.container, self.dep.previous
        api = self._api()
        try:
            try:
                current = api.inspect_container(name)
            except NotFound:
                raise DrillError(f"no container named {name} to replace") from None
            try:
                new_image = api.inspect_image(self.image)
            except NotFound:
                raise DrillError(f"image {self.image} is not on the engine (nothing is "
                                 "pulled)") from None
            self.image_id = str(new_image["Id"])
            try:
                old_image = api.inspect_image(current["Image"])
            except NotFound:
                old_image = None
            try:
                api.remove_container(previous, force=True)
            except NotFound:
                pass
            api.stop(current["Id"], timeout=int(self.dep.stop_timeout))
            api.rename(current["Id"], previous)
            body = recreate_body(current, old_image, self.image)
            api.create_container_from_config(body, name=name)
            api.start(name)
        except DockerException as exc:
            raise DrillError(f"docker engine refused the drill's deploy: {exc}") from None
        finally:
            api.close()
        return (f"{name} now runs {self.image} ({short(self.image_id)}); the container it "
                f"replaced ({short(current['Image'])}) is kept as {previous}")

    async def inject(self) -> str:
        return await asyncio.to_thread(self._deploy)

    def _tidy(self) -> str:
        from docker.errors import DockerException, NotFound

        api = self._api()
        removed = []
        try:
            prefix = f"{self.dep.container}.failed."
            for c in api.containers(all=True, filters={"name": prefix}):
                names = [n.lstrip("/") for n in c["Names"]]
                if c["ImageID"] == self.image_id and any(n.startswith(prefix) for n in names):
                    try:
                        api.remove_container(c["Id"], force=True)
                        removed += names
                    except NotFound:
                        pass
        except DockerException as exc:
            return f"could not tidy the drill's failed containers: {exc}"
        finally:
            api.close()
        return f"removed the drill's failed container(s): {', '.join(removed) or 'none'}"

    async def cleanup(self) -> str:
        return await asyncio.to_thread(self._tidy)
