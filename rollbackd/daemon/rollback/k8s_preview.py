"""Kubernetes test first: the preview Deployment of a known-good revision, built from its
ReplicaSet's pod template with labels and a selector of its own."""

from __future__ import annotations

import copy
import re
from typing import Any

PREVIEW_OF = "rollbackd.io/preview-of"
"""The preview's only pod label, and its selector: no Service and no ReplicaSet of the live
Deployment selects these pods, so the preview takes no traffic and is adopted by nobody."""
MANAGED_BY = "app.kubernetes.io/managed-by"
HASH_LABEL = "pod-template-hash"


def preview_name(deployment: str) -> str:
    return f"{deployment[:44].rstrip('.-')}-rbd-preview"


def label_value(text: str) -> str:
    """A valid label value (63 characters at most, alphanumerics at both ends)."""
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", re.sub(r"[^A-Za-z0-9._-]", "-",
                                                              text)[:63]) or "x"


def preview_body(dep: dict[str, Any], rs: dict[str, Any], revision: str, incident: int,
                 deadline: float) -> dict[str, Any]:
    """One replica of `rs`'s pod template (containers, volumes, probes unchanged) with the
    preview's own labels and selector."""
    name, ns = dep["metadata"]["name"], dep["metadata"]["namespace"]
    labels = {PREVIEW_OF: label_value(name)}
    template = copy.deepcopy(rs["spec"]["template"])
    meta = template.setdefault("metadata", {})
    meta["labels"] = dict(labels)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": preview_name(name), "namespace": ns,
                     "labels": {**labels, MANAGED_BY: "rollbackd"},
                     "annotations": {"rollbackd.io/incident": str(incident),
                                     "rollbackd.io/revision": revision}},
        "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)},
                 "template": template, "revisionHistoryLimit": 0,
                 "progressDeadlineSeconds": max(1, int(deadline))},
    }
