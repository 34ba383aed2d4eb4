"""What changed between two container releases: the Docker images (from the engine) and the
Kubernetes pod templates (from the API). Values that may be secret are never shown."""

from __future__ import annotations

from typing import Any

from rollbackd.daemon.incidents.change import Change, ChangeKind

# Template fields whose values are shown; any other field is named as changed, without values
# (an env value, an argument or an annotation may carry a secret).
SHOWN = frozenset({"image", "imagePullPolicy", "containerPort", "protocol", "cpu", "memory",
                   "restartPolicy", "serviceAccountName", "terminationGracePeriodSeconds",
                   "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold",
                   "successThreshold", "path", "port"})
MOST_FIELDS = 20


def _image_name(image: dict[str, Any] | None, ref: str) -> str:
    if image is None:
        return f"{ref[:19]} (no longer on the engine)"
    tags = ", ".join(image.get("RepoTags") or []) or "untagged"
    digests = [d.split("@", 1)[1] for d in image.get("RepoDigests") or [] if "@" in d]
    digest = f"digest {digests[0][:19]}" if digests else "no registry digest"
    return f"{tags} (id {str(image.get('Id', ref))[:19]}, {digest})"


def _env_keys(image: dict[str, Any] | None) -> set[str]:
    env = ((image or {}).get("Config") or {}).get("Env") or []
    return {e.split("=", 1)[0] for e in env}


async def image_changes(executor: Any, good: str, bad: str) -> list[Change]:
    """Old -> new image with tags, id and registry digest; the image's env key names."""
    old, new = await executor.image(good), await executor.image(bad)
    how = "docker image inspect on the engine"
    out = [Change(ChangeKind.IMAGE, f"{_image_name(old, good)} -> {_image_name(new, bad)}", how)]
    if old is not None and new is not None:
        keys = f"{how}: Config.Env key names; values not shown"
        before, after = _env_keys(old), _env_keys(new)
        out += [Change(ChangeKind.ENV, f"{k} added in the image's environment", keys)
                for k in sorted(after - before)]
        out += [Change(ChangeKind.ENV, f"{k} removed from the image's environment", keys)
                for k in sorted(before - after)]
    return out


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf paths of a template: lists of named items are keyed by name (containers[app])."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value) \
            and value:
        out = {}
        for v in value:
            rest = {k: x for k, x in v.items() if k != "name"}
            out.update(flatten(rest, f"{path}[{v['name']}]") or {f"{path}[{v['name']}]": ""})
        return out
    return {path: value}


def _field(path: str) -> str:
    return path.rsplit(".", 1)[-1].split("[", 1)[0]


def template_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One phrase per changed leaf field; values only for the fields in SHOWN."""
    a, b = flatten(old), flatten(new)
    out = []
    for path in sorted(a.keys() | b.keys()):
        if a.get(path) == b.get(path) and (path in a) == (path in b):
            continue
        name = path.removeprefix("spec.")
        shown = _field(path) in SHOWN
        if path not in a:
            out.append(f"{name} added" + (f": {b[path]}" if shown else ""))
        elif path not in b:
            out.append(f"{name} removed" + (f" (was {a[path]})" if shown else ""))
        else:
            out.append(f"{name}: {a[path]} -> {b[path]}" if shown else f"{name} changed "
                       "(value not shown)")
    return out


async def template_changes(executor: Any, good: str, bad: str) -> list[Change]:
    old, new = await executor.templates(good, bad)
    how = f"pod templates of revisions {good} and {bad} (ReplicaSets from the API)"
    if old is None or new is None:
        gone = good if old is None else bad
        return [Change(ChangeKind.NOTE, f"revision {gone} has no ReplicaSet any more "
                       "(revisionHistoryLimit?): templates not compared", how)]
    found = template_diff(old, new)
    shown = found[:MOST_FIELDS] + ([f"and {len(found) - MOST_FIELDS} more fields"]
                                   if len(found) > MOST_FIELDS else [])
    return [Change(ChangeKind.TEMPLATE, text, how) for text in shown]
