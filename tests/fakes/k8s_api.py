"""A fake Kubernetes API server on 127.0.0.1: the REST paths and JSON the official client uses.

Served (bearer-token auth, JSON only, errors as `Status` objects like a real API server):

    GET   /version, /api, /apis
    GET   /apis/apps/v1/namespaces/{ns}/deployments[/{name}]
    POST  /apis/apps/v1/namespaces/{ns}/deployments (create: 201, 409 AlreadyExists, 422)
    PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}
          (application/json-patch+json, merge-patch+json, strategic-merge-patch+json)
    DELETE /apis/apps/v1/namespaces/{ns}/deployments/{name} (its ReplicaSets and pods go too)
    GET   /apis/apps/v1/namespaces/{ns}/replicasets?labelSelector=...
    GET   /api/v1/namespaces/{ns}/pods?labelSelector=...

Behind it, tests/fakes/k8s_cluster.py keeps the objects and plays the deployment controller.
Every request is recorded in `requests` (method, path with query, content type, parsed body).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.k8s_cluster import Cluster

TOKEN = "rollbackd-test-token"
RESOURCE = re.compile(r"^/(?:api/v1|apis/apps/v1)/namespaces/([^/]+)/(deployments|replicasets|pods)"
                      r"(?:/([^/]+))?$")
LIST_KIND = {"deployments": "DeploymentList", "replicasets": "ReplicaSetList", "pods": "PodList"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def _requirement(term: str) -> Any:
    m = re.fullmatch(r"\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*", term)
    if m:
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values  # notin: a missing key matches too
    m = re.fullmatch(r"\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*", term)
    if m:
        key, op, value = m.groups()
        return lambda labels: (labels.get(key) == value) == (op != "!=")
    m = re.fullmatch(r"\s*(!?)([\w./-]+)\s*", term)
    if m:
        neg, key = m.groups()
        return lambda labels: (key in labels) != bool(neg)
    raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")


def label_matcher(selector: str) -> Any:
    """labelSelector syntax: `a=b,c!=d,e in (f,g),h notin (i),j,!k`."""
    terms = re.findall(r"(?:[^,(]|\([^)]*\))+", selector or "")
    reqs = [_requirement(t) for t in terms if t.strip()]
    return lambda labels: all(r(labels or {}) for r in reqs)


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test) on a copy."""
    doc, ops = copy.deepcopy(doc), copy.deepcopy(ops)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1] if parts else ""
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"the test operation on {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(idx, op["value"])
                else:
                    parent[idx] = op["value"]
            else:
                if op["op"] == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace operation does not apply: doc is "
                                   f"missing key: {op['path']}")
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch operation {op['op']!r}")
    return doc


def merge_patch(doc: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386; `strategic` merges lists of named objects (containers, env, ports) by name."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif strategic and isinstance(value, list) and isinstance(out.get(key), list) and all(
                isinstance(v, dict) and "name" in v for v in [*value, *out[key]]):
            merged = {v["name"]: v for v in out[key]}
            for v in value:
                merged[v["name"]] = merge_patch(merged.get(v["name"], {}), v, True)
            out[key] = list(merged.values())
        else:
            out[key] = merge_patch(out.get(key), value, strategic)
    return out


class FakeKubernetes:
    """The server and its cluster: `with FakeKubernetes() as k8s: k8s.cluster.add_deployment(...)`."""

    def __init__(self, cluster: Cluster | None = None, token: str = TOKEN) -> None:
        self.cluster = cluster or Cluster()
        self.token = token
        self.requests: list[tuple[str, str, str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                if fake._server is None:  # stopped: a kept-alive connection gets no answer
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                code, body = fake.handle(self.command, self.path,
                                         self.headers.get("Content-Type", ""),
                                         self.headers.get("Authorization", ""), raw)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _serve

        # Port 0 the first time; the same port again after stop() (the "API comes back").
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._stop.clear()
        threading.Thread(target=self._server.serve_forever, daemon=True, name="k8s-api").start()
        threading.Thread(target=self._tick, daemon=True, name="k8s-controller").start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.05):
            self.cluster.reconcile()

    def stop(self) -> None:
        """The API goes away: connections are refused (the cluster's state is kept)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig file (JSON is YAML) that points the official client here."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "rollbackd", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "rollbackd",
                                                      "namespace": namespace}}],
        }, indent=2))
        return path

    # -- request handling --------------------------------------------------------------------

    def handle(self, method: str, path: str, ctype: str, auth: str,
               raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append((method, path, ctype.split(";")[0], body))
        try:
            if auth != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            with self.cluster.lock:
                self.cluster.reconcile()
                found = self._route(method, path, ctype.split(";")[0], body)
                return (201 if method == "POST" else 200), found
        except ApiError as exc:
            return exc.code, exc.status()

    def _route(self, method: str, path: str, ctype: str, body: Any) -> dict[str, Any]:
        url = urlsplit(path)
        if method == "GET" and url.path == "/version":
            return {"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake",
                    "platform": "linux/amd64"}
        if method == "GET" and url.path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if method == "GET" and url.path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
                "name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}
        m = RESOURCE.match(url.path)
        if m is None or (m.group(2) == "pods") != url.path.startswith("/api/v1/"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, kind, name = m.groups()
        if name is None and method == "GET":
            return self._list(ns, kind, parse_qs(url.query).get("labelSelector", [""])[0])
        if name is not None and method == "GET":
            return self._render(kind, self._get(ns, kind, name))
        if name is not None and method == "PATCH" and kind == "deployments":
            return self._patch(ns, name, ctype, body)
        if name is None and method == "POST" and kind == "deployments":
            return self._create(ns, body)
        if name is not None and method == "DELETE" and kind == "deployments":
            self._get(ns, kind, name)
            self.cluster.delete_deployment(ns, name)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": "apps", "kind": "deployments"}}
        raise ApiError(405, "MethodNotAllowed", f"the fake does not serve {method} on {kind}")

    def _store(self, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
        c = self.cluster
        return {"deployments": c.deployments, "replicasets": c.replica_sets, "pods": c.pods}[kind]

    def _get(self, ns: str, kind: str, name: str) -> dict[str, Any]:
        obj = self._store(kind).get((ns, name))
        if obj is None:
            group = "" if kind == "pods" else ".apps"
            raise ApiError(404, "NotFound", f'{kind}{group} "{name}" not found')
        return obj

    def _render(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if kind == "pods":
            out["status"] = self.cluster.pod_status(obj)
        return out

    def _list(self, ns: str, kind: str, selector: str) -> dict[str, Any]:
        match = label_matcher(selector)
        items = [self._render(kind, o) for (n, _), o in sorted(self._store(kind).items())
                 if n == ns and match(o["metadata"].get("labels"))]
        for item in items:  # a real server leaves kind and apiVersion out of list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {"kind": LIST_KIND[kind], "apiVersion": "v1" if kind == "pods" else "apps/v1",
                "metadata": {"resourceVersion": str(int(time.time()))}, "items": items}

    def _create(self, ns: str, body: Any) -> dict[str, Any]:
        """As the API server validates a new Deployment, then the defaults it fills in."""
        if not isinstance(body, dict) or body.get("kind", "Deployment") != "Deployment":
            raise ApiError(400, "BadRequest", "the body is not a Deployment")
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        name = meta.get("name") or ""
        if (ns, name) in self.cluster.deployments:
            raise ApiError(409, "AlreadyExists", f'deployments.apps "{name}" already exists')
        want = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not want or any(labels.get(k) != v for k, v in want.items()):
            raise ApiError(422, "Invalid", f'Deployment.apps "{name}" is invalid: '
                           "spec.template.metadata.labels: Invalid value: `selector` does not "
                           "match template `labels`")
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match "
                           "the namespace on the request")
        return copy.deepcopy(self.cluster.create_deployment(ns, copy.deepcopy(body)))

    def _patch(self, ns: str, name: str, ctype: str, body: Any) -> dict[str, Any]:
        dep = self._get(ns, "deployments", name)
        if ctype == "application/json-patch+json" and isinstance(body, list):
            new = json_patch(dep, body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json") \
                and isinstance(body, dict):
            new = merge_patch(dep, body, strategic=ctype.startswith("application/strategic"))
        else:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media "
                           f"types include: application/json-patch+json, "
                           f"application/merge-patch+json, application/strategic-merge-patch+json "
                           f"(got {ctype!r})")
        if new["metadata"]["uid"] != dep["metadata"]["uid"] or new["metadata"]["name"] != name:
            raise ApiError(422, "Invalid", "metadata.name and metadata.uid cannot be changed")
        if new["spec"] != dep["spec"]:
            new["metadata"]["generation"] = dep["metadata"]["generation"] + 1
        new["status"] = dep["status"]  # the main resource's PATCH never writes status
        dep.clear()
        dep.update(new)
        self.cluster.touch(dep)
        return copy.deepcopy(dep)

    # -- what tests do to the cluster (as an operator or a deploy tool would) ----------------

    def set_image(self, name: str, image: str, namespace: str = "default") -> None:
        """`kubectl set image deployment/<name> app=<image>`: a strategic merge patch."""
        with self.cluster.lock:
            self._patch(namespace, name, "application/strategic-merge-patch+json",
                        {"spec": {"template": {"spec": {"containers": [
                            {"name": "app", "image": image}]}}}})
            self.cluster.reconcile()

    def delete_revision(self, name: str, revision: str, namespace: str = "default") -> None:
        """The ReplicaSet of `revision` disappears (revisionHistoryLimit pruned it, or a person)."""
        with self.cluster.lock:
            dep = self._get(namespace, "deployments", name)
            rs = next(rs for rs in self.cluster.owned_sets(dep)
                      if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                      == revision)
            self.cluster.delete_replica_set(rs)

    def revision(self, name: str, namespace: str = "default") -> str:
        with self.cluster.lock:
            dep = self._get(namespace, "deployments", name)
            return str(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
