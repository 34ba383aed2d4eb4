"""k8s_deployment: a Deployment's replicas are available, its rollout progresses, no pod crash-loops."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from rollbackd.probes.base import AbsolutePath, BaseProbe, ProbeSettings
from rollbackd.probes.observation import Observation, Symptom

REVISION = "deployment.kubernetes.io/revision"
# Waiting reasons of a container that will not get better by waiting.
BAD_WAITING = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                         "CreateContainerConfigError", "InvalidImageName"})
K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def selector_string(selector: dict[str, Any]) -> str:
    """A LabelSelector as the labelSelector query parameter (as metav1.LabelSelectorAsSelector)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], ",".join(sorted(e.get("values") or []))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


def pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """One line per container that is crash-looping or cannot get its image."""
    found = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in BAD_WAITING:
                found.append(f"pod {pod['metadata']['name']} container {cs['name']}: {reason} "
                             f"(restarts {cs.get('restartCount', 0)})")
    return found


class K8sDeploymentSettings(ProbeSettings):
    kind: Literal["k8s_deployment"] = "k8s_deployment"
    deployment: str = Field(pattern=K8S_NAME, max_length=253)
    """The Deployment's name."""
    namespace: str = Field(default="default", pattern=K8S_NAME, max_length=63)
    """The Deployment's namespace."""
    kubeconfig: AbsolutePath | None = None
    """Absolute path of the kubeconfig file; unset: the in-cluster service account."""
    context: str | None = None
    """kubeconfig context; unset: its current-context."""


class K8sDeploymentProbe(BaseProbe[K8sDeploymentSettings]):
    kind: ClassVar[str] = "k8s_deployment"

    def __init__(self, name: str, settings: K8sDeploymentSettings) -> None:
        super().__init__(name, settings)
        self._api: Any = None
        import kubernetes.client  # noqa: F401 - here, not first in a worker thread (see docker_container)

    async def run(self, started: float) -> Observation:
        return await asyncio.to_thread(self._check, started)

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config  # lazily: only k8s targets load the client

            cfg = type.__call__(client.Configuration)  # not the process-wide default
            if self.settings.kubeconfig is not None:
                config.load_kube_config(config_file=str(self.settings.kubeconfig),
                                        context=self.settings.context,
                                        client_configuration=cfg, persist_config=False)
            else:
                config.load_incluster_config(client_configuration=cfg)
            cfg.retries = 0  # the next check is the retry
            self._api = client.ApiClient(cfg)
        return self._api

    def _check(self, started: float) -> Observation:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError

        s = self.settings
        opts: dict[str, Any] = {"_preload_content": False, "_request_timeout": s.timeout}
        where = f"deployment {s.namespace}/{s.deployment}"
        try:
            api = self._client()
            apps: Any = client.AppsV1Api(api)  # raw JSON (_preload_content=False), not models
            core: Any = client.CoreV1Api(api)
            dep = json.loads(apps.read_namespaced_deployment(
                s.deployment, s.namespace, **opts).data)
            pods = json.loads(core.list_namespaced_pod(
                s.namespace, label_selector=selector_string(dep["spec"]["selector"]),
                **opts).data).get("items") or []
        except ApiException as exc:
            if exc.status == 404:
                return self.fail(f"{where} does not exist.", started, Symptom.CONTAINER_DOWN)
            return self.error(f"kubernetes API answered {exc.status} {exc.reason} for {where}.",
                              started)
        except ConfigException as exc:
            return self.error(f"cannot load the kubernetes client config: {exc}", started)
        except (HTTPError, OSError) as exc:
            host = getattr(getattr(self._api, "configuration", None), "host", "?")
            return self.error(f"kubernetes API at {host} is not answering "
                              f"({type(exc).__name__}); the deployment's state is unknown.",
                              started)
        return self._judge(dep, pods, started)

    def _judge(self, dep: dict[str, Any], pods: list[dict[str, Any]],
               started: float) -> Observation:
        s, st = self.settings, dep.get("status") or {}
        want, available = dep["spec"].get("replicas", 1), st.get("availableReplicas", 0)
        revision = (dep["metadata"].get("annotations") or {}).get(REVISION)
        metrics = {"replicas_desired": float(want), "replicas_available": float(available),
                   "replicas_updated": float(st.get("updatedReplicas", 0))}
        figures = f"{available}/{want} available, revision {revision or '?'}"

        def fail(why: str) -> Observation:
            return self.fail(f"{s.deployment}: {why} ({figures}).", started,
                             Symptom.CONTAINER_DOWN, revision, metrics)

        progressing: dict[str, Any] = next((c for c in st.get("conditions") or []
                            if c.get("type") == "Progressing"), {})
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return fail(f"rollout exceeded its progress deadline: {progressing.get('message', '')}")
        problems = pod_problems(pods)
        if problems:
            more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
            return fail("; ".join(problems[:2]) + more)
        if available < want:
            return fail(f"only {available} of {want} replicas available")
        return self.ok(f"{s.deployment}: {figures}.", started, revision, metrics)
