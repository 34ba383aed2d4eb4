"""kubernetes rollback: `kubectl rollout undo --to-revision` then `rollout status`, by the client."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from rollbackd.daemon.rollback.base import CHECK_ONLY, Effect, StepContext, StepFailed, absent, done
from rollbackd.daemon.rollback.deploy_settings import KubernetesDeployment
from rollbackd.policies.plans import Capabilities, Capability, Component, StepSpec
from rollbackd.probes.k8s_deployment import pod_problems, selector_string

log = logging.getLogger("rollbackd.rollback.kubernetes")

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
# kubectl keeps these from the Deployment and never copies them from the ReplicaSet.
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", "deprecated.deployment.rollback.to",
    REVISION, REVISION_HISTORY, "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
})
def revisions_of(rs: dict[str, Any]) -> list[str]:
    """The revision a ReplicaSet has now, then those it had before a rollback reused it."""
    notes = rs["metadata"].get("annotations") or {}
    history = [r for r in (notes.get(REVISION_HISTORY) or "").split(",") if r]
    return [notes[REVISION], *history] if REVISION in notes else history


def rs_for_revision(replica_sets: list[dict[str, Any]], revision: str) -> dict[str, Any] | None:
    return next((rs for rs in replica_sets if revision in revisions_of(rs)), None)


def without_hash(template: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(template)
    labels = template.setdefault("metadata", {}).get("labels") or {}
    labels.pop(HASH_LABEL, None)
    return template


def rollback_patch(deployment: dict[str, Any], rs: dict[str, Any]) -> list[dict[str, Any]]:
    """kubectl's JSON patch: the ReplicaSet's template, and its annotations but for the skipped."""
    mine = deployment["metadata"].get("annotations") or {}
    annotations = {k: v for k, v in mine.items() if k in ANNOTATIONS_TO_SKIP}
    annotations.update({k: v for k, v in (rs["metadata"].get("annotations") or {}).items()
                        if k not in ANNOTATIONS_TO_SKIP})
    return [{"op": "replace", "path": "/spec/template", "value": without_hash(rs["spec"]["template"])},
            {"op": "replace", "path": "/metadata/annotations", "value": annotations}]


def rollout_status(dep: dict[str, Any]) -> tuple[bool, str]:
    """(done, message) as `kubectl rollout status`; StepFailed past the progress deadline."""
    name, spec, st = dep["metadata"]["name"], dep["spec"], dep.get("status") or {}
    if dep["metadata"].get("generation", 0) > st.get("observedGeneration", 0):
        return False, "waiting for the deployment spec update to be observed"
    cond = next((c for c in st.get("conditions") or [] if c["type"] == "Progressing"), None)
    if cond is not None and cond.get("reason") == "ProgressDeadlineExceeded":
        raise StepFailed(f"deployment {name!r} exceeded its progress deadline: "
                         f"{cond.get('message', '')}")
    want, updated = spec.get("replicas", 1), st.get("updatedReplicas", 0)
    if updated < want:
        return False, f"{updated} out of {want} new replicas have been updated"
    if st.get("replicas", 0) > updated:
        return False, f"{st.get('replicas', 0) - updated} old replicas are pending termination"
    if st.get("availableReplicas", 0) < updated:
        return False, f"{st.get('availableReplicas', 0)} of {updated} updated replicas are available"
    return True, f"deployment {name!r} successfully rolled out"


class KubernetesExecutor:
    component: ClassVar[Component] = Component.DEPLOYMENT
    backend: ClassVar[str] = "kubernetes"

    def __init__(self, settings: KubernetesDeployment) -> None:
        self.settings = s = settings
        self.where = f"deployment {s.namespace}/{s.deployment}"
        self._api: Any = None
        import kubernetes.client  # noqa: F401 - here, not first in a worker thread (racing imports)
        api, c = s.api_timeout, Component.DEPLOYMENT
        self.steps = (
            StepSpec("restore_pod_template", idempotent=True, timeout=3 * api + 5, component=c),
            StepSpec("rollout_status", idempotent=True, timeout=s.rollout_timeout + api + 5,
                     component=c),
            StepSpec("check_pods", idempotent=True, timeout=3 * api + 5, component=c),
        )

    def capabilities(self) -> Capabilities:
        return {Capability.DEPLOYMENT_ROLLBACK: self.steps}

    # -- the API: blocking client calls in a thread, raw JSON as the server sent it ----------

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config  # lazily, as the docker SDK

            cfg = type.__call__(client.Configuration)  # not the process-wide default
            if self.settings.kubeconfig is not None:
                config.load_kube_config(config_file=str(self.settings.kubeconfig),
                                        context=self.settings.context,
                                        client_configuration=cfg, persist_config=False)
            else:
                config.load_incluster_config(client_configuration=cfg)
            cfg.retries = 1  # a dead API fails a step in about api_timeout, not four times that
            self._api = client.ApiClient(cfg)
        return self._api

    def _guarded(self, call: Callable[[Any, Any], Any]) -> Any:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError

        try:
            api = self._client()
            return json.loads(call(client.AppsV1Api(api), client.CoreV1Api(api)).data)
        except ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                message = exc.reason
            raise StepFailed(f"kubernetes API answered {exc.status} for {self.where}: "
                             f"{message}") from None
        except ConfigException as exc:
            raise StepFailed(f"cannot load the kubernetes client config: {exc}") from None
        except (HTTPError, OSError) as exc:
            host = getattr(getattr(self._api, "configuration", None), "host", "?")
            raise StepFailed(f"kubernetes API at {host} is not answering: "
                             f"{type(exc).__name__}") from None

    async def _call(self, call: Callable[[Any, Any], Any]) -> Any:
        return await asyncio.to_thread(self._guarded, call)

    def _opts(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self.settings.api_timeout}

    async def _deployment(self) -> dict[str, Any]:
        s = self.settings
        return dict(await self._call(lambda apps, core: apps.read_namespaced_deployment(
            s.deployment, s.namespace, **self._opts())))

    async def _replica_sets(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        """The ReplicaSets the Deployment controls (its selector, then ownerReferences uid)."""
        sel = selector_string(dep["spec"]["selector"])
        found = await self._call(lambda apps, core: apps.list_namespaced_replica_set(
            self.settings.namespace, label_selector=sel, **self._opts()))
        uid = dep["metadata"]["uid"]
        return [rs for rs in found.get("items") or []
                if any(o.get("controller") and o.get("uid") == uid
                       for o in rs["metadata"].get("ownerReferences") or [])]

    async def _pods(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        sel = selector_string(dep["spec"]["selector"])
        found = await self._call(lambda apps, core: core.list_namespaced_pod(
            self.settings.namespace, label_selector=sel, **self._opts()))
        return list(found.get("items") or [])

    async def _target_rs(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, Any]]:
        revision = ctx.target_of(Component.DEPLOYMENT)
        dep = await self._deployment()
        rss = await self._replica_sets(dep)
        rs = rs_for_revision(rss, revision)
        if rs is None:
            kept = sorted({r for x in rss for r in revisions_of(x)}, key=lambda r: (len(r), r))
            raise StepFailed(f"revision {revision} of {self.where} is gone (pruned by "
                             f"revisionHistoryLimit?); revisions kept: {', '.join(kept) or 'none'}")
        return dep, rs

    # -- the executor protocol -------------------------------------------------------------

    async def current_version(self) -> str | None:
        try:
            dep = await self._deployment()
        except StepFailed as exc:
            log.debug("%s version=unknown reason=%s", self.where, exc)
            return None
        return (dep["metadata"].get("annotations") or {}).get(REVISION)

    async def evidence(self) -> dict[str, Any]:
        try:
            dep = await self._deployment()
            pods = await self._pods(dep)
            rss = await self._replica_sets(dep)
        except StepFailed as exc:
            return {"deployment": self.where, "error": str(exc)}
        st = dep.get("status") or {}
        return {
            "deployment": self.where,
            "revision": (dep["metadata"].get("annotations") or {}).get(REVISION),
            "generation": dep["metadata"].get("generation"),
            "observed_generation": st.get("observedGeneration"),
            "replicas": {k: st.get(k, 0) for k in ("replicas", "updatedReplicas",
                                                   "readyReplicas", "availableReplicas")},
            "conditions": [f"{c['type']}={c['status']} {c.get('reason', '')}: "
                           f"{c.get('message', '')}" for c in st.get("conditions") or []],
            "images": [c.get("image") for c in dep["spec"]["template"]["spec"]["containers"]],
            "revisions": {rs["metadata"]["name"]: revisions_of(rs) for rs in rss},
            "pod_problems": pod_problems(pods),
            "pods": [f"{p['metadata']['name']} {(p.get('status') or {}).get('phase')}"
                     for p in pods][:20],
        }

    async def backup_current(self, ctx: StepContext) -> str:
        dep = await self._deployment()
        spec = dep["spec"]
        return (f"revision {ctx.plan.current_version or '?'} stays as a ReplicaSet of "
                f"{self.where} (revisionHistoryLimit {spec.get('revisionHistoryLimit', 10)})")

    async def verify_target(self, ctx: StepContext) -> str:
        dep, rs = await self._target_rs(ctx)
        if dep["spec"].get("paused"):
            raise StepFailed(f"{self.where} is paused; resume it first (kubectl rollout resume)")
        return (f"revision {ctx.target_of(Component.DEPLOYMENT)} is ReplicaSet "
                f"{rs['metadata']['name']}")

    async def run_step(self, name: str, ctx: StepContext) -> str:
        steps = {"restore_pod_template": self._restore, "rollout_status": self._wait,
                 "check_pods": self._check_pods}
        if name not in steps:
            raise StepFailed(f"kubernetes executor has no step {name!r}")
        return await steps[name](ctx)

    # -- after a crash: did the step's effect happen? -----------------------------------------

    async def effect(self, name: str, ctx: StepContext, since: datetime) -> Effect:
        if name != "restore_pod_template":
            return CHECK_ONLY  # rollout_status and check_pods only look
        dep, rs = await self._target_rs(ctx)
        revision, rs_name = ctx.target_of(Component.DEPLOYMENT), rs["metadata"]["name"]
        if without_hash(rs["spec"]["template"]) == without_hash(dep["spec"]["template"]):
            return done(f"the pod template of {self.where} is revision {revision}'s ({rs_name})")
        now = (dep["metadata"].get("annotations") or {}).get(REVISION, "?")
        return absent(f"the pod template of {self.where} is not revision {revision}'s (the "
                      f"deployment is at revision {now})")

    # -- steps -------------------------------------------------------------------------------

    async def _restore(self, ctx: StepContext) -> str:
        dep, rs = await self._target_rs(ctx)
        revision, rs_name = ctx.target_of(Component.DEPLOYMENT), rs["metadata"]["name"]
        if dep["spec"].get("paused"):
            raise StepFailed(f"{self.where} is paused; resume it first (kubectl rollout resume)")
        if without_hash(rs["spec"]["template"]) == without_hash(dep["spec"]["template"]):
            return f"skipped: the template already matches revision {revision} ({rs_name})"
        patch = rollback_patch(dep, rs)
        s = self.settings
        await self._call(lambda apps, core: apps.patch_namespaced_deployment(
            s.deployment, s.namespace, patch, _content_type="application/json-patch+json",
            **self._opts()))
        images = ", ".join(c.get("image", "?") for c in rs["spec"]["template"]["spec"]["containers"])
        return f"restored the pod template of revision {revision} from {rs_name} ({images})"

    async def _wait(self, ctx: StepContext) -> str:
        deadline = time.monotonic() + self.settings.rollout_timeout
        started = time.monotonic()
        while True:
            done, message = rollout_status(await self._deployment())
            if done:
                return f"{message} in {time.monotonic() - started:.1f}s"
            if time.monotonic() > deadline:
                raise StepFailed(f"rollout not done after {self.settings.rollout_timeout:g}s: "
                                 f"{message}")
            await asyncio.sleep(self.settings.poll_interval)

    async def _check_pods(self, ctx: StepContext) -> str:
        dep, rs = await self._target_rs(ctx)
        want = dep["spec"].get("replicas", 1)
        ours = (rs["spec"]["template"]["metadata"].get("labels") or {}).get(HASH_LABEL)
        pods = [p for p in await self._pods(dep)
                if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == ours
                and not p["metadata"].get("deletionTimestamp")]
        problems = pod_problems(pods)
        ready = [p for p in pods if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions") or [])]
        if problems or len(ready) < want:
            raise StepFailed(f"{len(ready)} of {want} pods of {rs['metadata']['name']} ready"
                             + (f": {'; '.join(problems[:3])}" if problems else ""))
        return f"{len(ready)} of {want} pods of {rs['metadata']['name']} ready, none crash-looping"
