"""Injectors: how a drill puts its fault in. A configured argv (no shell), or a built-in one."""

from __future__ import annotations

from rollbackd.daemon.drills.injector_base import DrillError, InjectContext, Injector, run_injector_argv

# DrillError, InjectContext and Injector are injector_base's, named here too for the procedure.
__all__ = ["ArgvInjector", "DrillError", "InjectContext", "Injector", "build_injector"]


class ArgvInjector:
    def __init__(self, ctx: InjectContext) -> None:
        self.ctx = ctx

    async def inject(self) -> str:
        assert self.ctx.settings.argv is not None
        return await run_injector_argv(self.ctx.settings.argv, self.ctx, "injector")

    async def cleanup(self) -> str:
        if self.ctx.settings.cleanup is None:
            return "no cleanup configured"
        return await run_injector_argv(self.ctx.settings.cleanup, self.ctx, "cleanup")


def build_injector(ctx: InjectContext) -> Injector:
    """The injector the settings name; DrillError when the target lacks what it works on."""
    builtin = ctx.settings.builtin
    if builtin is None:
        return ArgvInjector(ctx)
    if builtin in ("sampleapp_wont_start", "sampleapp_slow"):
        from rollbackd.daemon.drills.injectors_git import SampleAppCommit

        return SampleAppCommit(ctx)
    if builtin == "docker_image":
        from rollbackd.daemon.drills.injectors_docker import DockerImage

        return DockerImage(ctx)
    from rollbackd.daemon.drills.injectors_data import DATA_INJECTORS

    return DATA_INJECTORS[builtin](ctx)
