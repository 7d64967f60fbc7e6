"""A small kustomize renderer for the subset k8s/ uses, so the manifests are checked without kubectl.

Supported kustomization fields: `resources` (files and directories), `namespace`, `labels`
(with `includeTemplates`), `patches` (strategic merge, by file path, target found from the patch's
kind and name) and `images`. Anything else is refused, so a kustomization that grows past this subset
fails loudly instead of being rendered wrongly. When kubectl is installed, a test compares this
renderer's output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "patches", "images"}

CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "PriorityClass",
}

# Strategic-merge keys of the Kubernetes lists the overlays patch; other lists are replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}
# `ports` merges by containerPort in a pod and by port in a Service.
PORT_KEYS = ("containerPort", "port")

TEMPLATE_PATHS = {
    "Deployment": [("spec", "template")],
    "StatefulSet": [("spec", "template")],
    "DaemonSet": [("spec", "template")],
    "ReplicaSet": [("spec", "template")],
    "Job": [("spec", "template")],
    "CronJob": [("spec", "jobTemplate"), ("spec", "jobTemplate", "spec", "template")],
}


class KustomizeError(Exception):
    pass


def load_yaml_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def build(directory: Path) -> list[Manifest]:
    """Render the kustomization in `directory`."""
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    kustomization = yaml.safe_load(kustomization_file.read_text())
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kustomization_file}: fields outside the supported subset: {sorted(unknown)}")

    resources: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            resources.extend(build(target))
        else:
            resources.extend(load_yaml_documents(target))

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise KustomizeError(f"{kustomization_file}: only `patches: - path: FILE` is supported")
        for patch in load_yaml_documents(directory / patch_entry["path"]):
            _apply_patch(resources, patch, source=directory / patch_entry["path"])

    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED_KINDS:
                resource.setdefault("metadata", {})["namespace"] = namespace

    for label_entry in kustomization.get("labels", []):
        if label_entry.get("includeSelectors"):
            raise KustomizeError("labels with includeSelectors are outside the supported subset")
        for resource in resources:
            _add_labels(resource, label_entry["pairs"], templates=bool(label_entry.get("includeTemplates")))

    for image in kustomization.get("images", []):
        for resource in resources:
            _set_image(resource, image)
    return resources


def _identity(manifest: Manifest) -> tuple[str, str]:
    return manifest["kind"], manifest["metadata"]["name"]


def _apply_patch(resources: list[Manifest], patch: Manifest, *, source: Path) -> None:
    matches = [r for r in resources if _identity(r) == _identity(patch)]
    if len(matches) != 1:
        raise KustomizeError(f"{source}: patch {_identity(patch)} matches {len(matches)} resources")
    target = matches[0]
    merged = strategic_merge(target, patch)
    target.clear()
    target.update(merged)


def strategic_merge(original: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(original, dict) and isinstance(patch, dict):
        result = copy.deepcopy(original)
        for name, value in patch.items():
            if value is None:
                result.pop(name, None)
            elif name in result:
                result[name] = strategic_merge(result[name], value, name)
            else:
                result[name] = copy.deepcopy(value)
        return result
    if isinstance(original, list) and isinstance(patch, list):
        merge_key = _merge_key(key, original + patch)
        if merge_key is None:
            return copy.deepcopy(patch)
        by_key = {item[merge_key]: item for item in original}
        patched_keys = {item[merge_key] for item in patch}
        # kustomize lists the patch's items first, then the original's untouched ones.
        merged = [
            strategic_merge(by_key[item[merge_key]], item) if item[merge_key] in by_key else copy.deepcopy(item)
            for item in patch
        ]
        merged.extend(copy.deepcopy(item) for item in original if item[merge_key] not in patched_keys)
        return merged
    return copy.deepcopy(patch)


def _merge_key(field: str | None, items: list[Any]) -> str | None:
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports":
        for candidate in PORT_KEYS:
            if items and all(isinstance(i, dict) and candidate in i for i in items):
                return candidate
    return None


def _add_labels(resource: Manifest, pairs: dict[str, str], *, templates: bool) -> None:
    resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if not templates:
        return
    for path in TEMPLATE_PATHS.get(resource["kind"], []):
        node: Any = resource
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and node:
            node.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if resource["kind"] == "StatefulSet":
        for claim in resource.get("spec", {}).get("volumeClaimTemplates", []):
            claim.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/name:tag@digest` -> (name, tag, digest)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash, colon = image.rfind("/"), image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1 :]
    return image, tag, digest


def _containers(resource: Manifest) -> list[dict[str, Any]]:
    pod_specs = []
    kind = resource["kind"]
    if kind == "Pod":
        pod_specs.append(resource.get("spec", {}))
    elif kind == "CronJob":
        pod_specs.append(resource["spec"]["jobTemplate"]["spec"]["template"].get("spec", {}))
    elif kind in TEMPLATE_PATHS:
        pod_specs.append(resource["spec"]["template"].get("spec", {}))
    found: list[dict[str, Any]] = []
    for spec in pod_specs:
        found.extend(spec.get("initContainers", []))
        found.extend(spec.get("containers", []))
    return found


def _set_image(resource: Manifest, image: dict[str, str]) -> None:
    for container in _containers(resource):
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        elif "newTag" in image:
            container["image"] = f"{name}:{image['newTag']}"
        else:
            suffix = f":{tag}" if tag else ""
            suffix += f"@{digest}" if digest else ""
            container["image"] = name + suffix


def pod_containers(resource: Manifest) -> list[dict[str, Any]]:
    """Every container (init ones included) of a workload."""
    return _containers(resource)
