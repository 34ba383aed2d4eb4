"""The fake cluster's objects and its deployment controller, as the real one shapes them.

Objects are the JSON a real API server returns (kind, apiVersion, metadata with uid,
resourceVersion, generation, annotations, ownerReferences; status with conditions). The controller
follows kube-controller-manager's deployment controller closely enough for rollouts: a changed pod
template bumps `generation`; the controller finds the ReplicaSet whose template equals it (ignoring
`pod-template-hash`) or makes one, gives it the next revision (keeping the old one in
`revision-history`, as a rollback does), scales it up, and scales the old ones down once the new
pods are ready (maxSurge 100%, maxUnavailable 0). Pods of an image in `failing_images` never get
ready: CrashLoopBackOff (restarts counting up) or ImagePullBackOff; then `Progressing` turns
False with reason ProgressDeadlineExceeded after `progressDeadlineSeconds`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH = "pod-template-hash"


def stamp(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(strip_hash(template), sort_keys=True).encode()).hexdigest()[:10]


def strip_hash(template: dict[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(template)
    (t.get("metadata") or {}).get("labels", {}).pop(HASH, None)
    return t


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(o.get("controller") and o["uid"] == owner["metadata"]["uid"]
               for o in obj["metadata"].get("ownerReferences") or [])


def owner_ref(owner: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


class Cluster:
    """Deployments, ReplicaSets and Pods of one fake cluster; thread-safe behind `lock`."""

    def __init__(self, ready_after: float = 0.3, crash_period: float = 0.5) -> None:
        self.lock = threading.RLock()
        self.ready_after = ready_after
        self.crash_period = crash_period
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.replica_sets: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.failing_images: dict[str, str] = {}
        """image -> "CrashLoopBackOff" or "ImagePullBackOff": its pods never get ready."""
        self._rv = itertools.count(1000)
        self._born: dict[str, float] = {}  # pod uid -> when it was created
        self._failing_since: dict[str, float] = {}  # pod uid -> when its image started failing
        self._progress: dict[str, tuple[float, int]] = {}  # deployment uid -> (last progress, ready)

    def _meta(self, name: str, namespace: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                "resourceVersion": str(next(self._rv)), "creationTimestamp": stamp(), **extra}

    def touch(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))

    def add_deployment(self, name: str, image: str, namespace: str = "default", replicas: int = 2,
                       progress_deadline: int = 600, history_limit: int = 10) -> dict[str, Any]:
        labels = {"app": name}
        dep = {
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": self._meta(name, namespace, generation=1, labels=labels,
                                   annotations={}),
            "spec": {
                "replicas": replicas, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels, "creationTimestamp": None},
                             "spec": {"containers": [{
                                 "name": "app", "image": image,
                                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                 "resources": {}, "terminationMessagePath": "/dev/termination-log",
                                 "terminationMessagePolicy": "File",
                                 "imagePullPolicy": "IfNotPresent"}],
                                 "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                                 "dnsPolicy": "ClusterFirst", "securityContext": {},
                                 "schedulerName": "default-scheduler"}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"}},
                "revisionHistoryLimit": history_limit,
                "progressDeadlineSeconds": progress_deadline,
            },
            "status": {"observedGeneration": 0},
        }
        with self.lock:
            self.deployments[(namespace, name)] = dep
            self.reconcile()
        return dep

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """A Deployment as POSTed, with the server's metadata and defaults."""
        meta, spec = body["metadata"], body["spec"]
        body["metadata"] = self._meta(meta["name"], namespace, generation=1,
                                      labels=meta.get("labels") or {},
                                      annotations=meta.get("annotations") or {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": {
            "maxUnavailable": "25%", "maxSurge": "25%"}})
        body.update(kind="Deployment", apiVersion="apps/v1", status={"observedGeneration": 0})
        with self.lock:
            self.deployments[(namespace, meta["name"])] = body
            self.reconcile()
        return body

    def delete_deployment(self, namespace: str, name: str) -> None:
        """As a foreground cascading delete: its ReplicaSets and their pods go with it."""
        with self.lock:
            dep = self.deployments.pop((namespace, name))
            for rs in self.owned_sets(dep):
                self.delete_replica_set(rs)

    # -- the deployment controller ----------------------------------------------------------

    def reconcile(self) -> None:
        with self.lock:
            for dep in list(self.deployments.values()):
                before = json.dumps(dep, sort_keys=True)
                self._sync(dep)
                if json.dumps(dep, sort_keys=True) != before:
                    self.touch(dep)

    def owned_sets(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        return [rs for rs in self.replica_sets.values() if owned_by(rs, dep)]

    def pods_of(self, rs: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if owned_by(p, rs)]

    def _sync(self, dep: dict[str, Any]) -> None:
        meta, spec, st = dep["metadata"], dep["spec"], dep["status"]
        sets = self.owned_sets(dep)
        new = next((rs for rs in sets if strip_hash(rs["spec"]["template"])
                    == strip_hash(spec["template"])), None)
        if st.get("observedGeneration", 0) < meta["generation"] or new is None:
            new = self._new_replica_set(dep, sets, new)
            st["observedGeneration"] = meta["generation"]
            self._progress[meta["uid"]] = (time.time(), 0)
        want = spec["replicas"]
        self._scale(new, want)
        ready_new = sum(1 for p in self.pods_of(new) if self.pod_ready(p))
        if ready_new >= want:  # maxUnavailable 0: the old pods go once the new are all ready
            for rs in sets:
                if rs is not new:
                    self._scale(rs, 0)
        self._prune(dep, new)
        self._status(dep, new, ready_new)

    def _new_replica_set(self, dep: dict[str, Any], sets: list[dict[str, Any]],
                         found: dict[str, Any] | None) -> dict[str, Any]:
        top = max((int(rs["metadata"]["annotations"][REVISION]) for rs in sets), default=0)
        if found is None:
            h = template_hash(dep["spec"]["template"])
            template = copy.deepcopy(dep["spec"]["template"])
            template["metadata"].setdefault("labels", {})[HASH] = h
            name, ns = f"{dep['metadata']['name']}-{h}", dep["metadata"]["namespace"]
            found = {
                "kind": "ReplicaSet", "apiVersion": "apps/v1",
                "metadata": self._meta(name, ns, generation=1,
                                       labels=dict(template["metadata"]["labels"]),
                                       annotations={REVISION: str(top + 1)},
                                       ownerReferences=[owner_ref(dep, "Deployment")]),
                "spec": {"replicas": 0, "selector": {"matchLabels": {
                    **dep["spec"]["selector"]["matchLabels"], HASH: h}}, "template": template},
                "status": {"replicas": 0, "observedGeneration": 1},
            }
            self.replica_sets[(ns, name)] = found
        else:
            notes = found["metadata"]["annotations"]
            if int(notes[REVISION]) < top:  # a rollback to it: it becomes the newest revision
                old = notes[REVISION]
                history = [r for r in notes.get(REVISION_HISTORY, "").split(",") if r]
                notes[REVISION_HISTORY] = ",".join([*history, old])
                notes[REVISION] = str(top + 1)
        notes = found["metadata"]["annotations"]
        notes["deployment.kubernetes.io/desired-replicas"] = str(dep["spec"]["replicas"])
        notes["deployment.kubernetes.io/max-replicas"] = str(2 * dep["spec"]["replicas"])
        dep["metadata"].setdefault("annotations", {})[REVISION] = notes[REVISION]
        return found

    def _scale(self, rs: dict[str, Any], n: int) -> None:
        if rs["spec"]["replicas"] != n:
            rs["spec"]["replicas"] = n
            rs["metadata"]["generation"] += 1
        pods = sorted(self.pods_of(rs), key=lambda p: p["metadata"]["name"])
        for pod in pods[n:]:
            del self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])]
        for _ in range(n - len(pods)):
            self._new_pod(rs)
        self._rs_status(rs)

    def _new_pod(self, rs: dict[str, Any]) -> None:
        t = rs["spec"]["template"]
        name = f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        ns = rs["metadata"]["namespace"]
        pod = {"kind": "Pod", "apiVersion": "v1",
               "metadata": self._meta(name, ns, generateName=f"{rs['metadata']['name']}-",
                                      labels=dict(t["metadata"]["labels"]),
                                      ownerReferences=[owner_ref(rs, "ReplicaSet")]),
               "spec": {**copy.deepcopy(t["spec"]), "nodeName": "fake-node"}}
        self._born[pod["metadata"]["uid"]] = time.time()
        self.pods[(ns, name)] = pod

    def _prune(self, dep: dict[str, Any], new: dict[str, Any]) -> None:
        old = sorted((rs for rs in self.owned_sets(dep) if rs is not new
                      and rs["spec"]["replicas"] == 0 and not self.pods_of(rs)),
                     key=lambda rs: int(rs["metadata"]["annotations"][REVISION]))
        for rs in old[:max(0, len(old) - dep["spec"].get("revisionHistoryLimit", 10))]:
            self.delete_replica_set(rs)

    def delete_replica_set(self, rs: dict[str, Any]) -> None:
        """As `kubectl delete rs` (or pruning): its pods are garbage-collected with it."""
        with self.lock:
            for pod in self.pods_of(rs):
                del self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])]
            del self.replica_sets[(rs["metadata"]["namespace"], rs["metadata"]["name"])]

    # -- status, computed from time and the failing images, as the kubelet would report it ---

    def pod_ready(self, pod: dict[str, Any]) -> bool:
        return self.pod_status(pod)["containerStatuses"][0]["ready"]

    def pod_status(self, pod: dict[str, Any]) -> dict[str, Any]:
        uid, now = pod["metadata"]["uid"], time.time()
        born = self._born[uid]
        c = pod["spec"]["containers"][0]
        failing = self.failing_images.get(c["image"])
        since = self._failing_since.setdefault(uid, now) if failing else None
        if not failing:
            self._failing_since.pop(uid, None)
        cs: dict[str, Any] = {"name": c["name"], "image": c["image"],
                              "imageID": f"docker-pullable://{c['image']}@sha256:{uid[:8] * 8}",
                              "containerID": f"containerd://{uid.replace('-', '')}",
                              "restartCount": 0, "ready": False, "started": False}
        if failing == "ImagePullBackOff":
            cs["state"] = {"waiting": {"reason": "ImagePullBackOff",
                                       "message": f'Back-off pulling image "{c["image"]}"'}}
            cs["imageID"], cs["containerID"] = "", None
            phase = "Pending"
        elif failing:
            cs["restartCount"] = 1 + int((now - (since or now)) / self.crash_period)
            cs["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off 10s restarting failed container={c['name']} "
                f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}")}}
            cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error",
                                              "startedAt": stamp(now - 1), "finishedAt": stamp(now)}}
            phase = "Running"
        else:
            cs["state"] = {"running": {"startedAt": stamp(born)}}
            cs["ready"] = cs["started"] = now - born >= self.ready_after
            phase = "Running"
        ready = "True" if cs["ready"] else "False"
        conditions = [{"type": t, "status": s, "lastProbeTime": None,
                       "lastTransitionTime": stamp(born)}
                      for t, s in (("Initialized", "True"), ("Ready", ready),
                                   ("ContainersReady", ready), ("PodScheduled", "True"))]
        return {"phase": phase, "conditions": conditions, "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1", "startTime": stamp(born), "containerStatuses": [cs],
                "qosClass": "BestEffort"}

    def _rs_status(self, rs: dict[str, Any]) -> None:
        pods = self.pods_of(rs)
        ready = sum(1 for p in pods if self.pod_ready(p))
        rs["status"] = {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
                        "observedGeneration": rs["metadata"]["generation"]}
        if ready:
            rs["status"].update(readyReplicas=ready, availableReplicas=ready)

    def _status(self, dep: dict[str, Any], new: dict[str, Any], ready_new: int) -> None:
        want, now, uid = dep["spec"]["replicas"], time.time(), dep["metadata"]["uid"]
        pods = [p for rs in self.owned_sets(dep) for p in self.pods_of(rs)]
        ready = sum(1 for p in pods if self.pod_ready(p))
        updated = len(self.pods_of(new))
        last, seen = self._progress.get(uid, (now, 0))
        if ready_new > seen:
            last, seen = now, ready_new
        self._progress[uid] = (last, seen)
        st = dep["status"]
        old = {c["type"]: c for c in st.get("conditions") or []}
        rs_name = new["metadata"]["name"]
        if updated == want and ready_new == want and len(pods) == want:
            prog = ("True", "NewReplicaSetAvailable", f'ReplicaSet "{rs_name}" has successfully progressed.')
        elif now - last > dep["spec"].get("progressDeadlineSeconds", 600):
            prog = ("False", "ProgressDeadlineExceeded", f'ReplicaSet "{rs_name}" has timed out progressing.')
        else:
            prog = ("True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.')
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.") \
            if ready >= want else \
            ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        conditions = []
        for ctype, (status, reason, message) in (("Available", avail), ("Progressing", prog)):
            prev = old.get(ctype)
            same = prev is not None and (prev["status"], prev["reason"], prev["message"]) == \
                (status, reason, message)
            conditions.append({
                "type": ctype, "status": status, "reason": reason, "message": message,
                "lastUpdateTime": prev["lastUpdateTime"] if same and prev else stamp(now),
                "lastTransitionTime": prev["lastTransitionTime"]
                if prev is not None and prev["status"] == status else stamp(now)})
        st.update(replicas=len(pods), updatedReplicas=updated, conditions=conditions)
        for key, value in (("readyReplicas", ready), ("availableReplicas", ready),
                           ("unavailableReplicas", len(pods) - ready)):
            if value:
                st[key] = value
            else:
                st.pop(key, None)
