"""Just enough of ``kustomize build`` to test k8s/ where the kustomize binary is missing.

Supports the fields k8s/ uses: ``resources`` (files and kustomization directories),
``namespace`` and JSON 6902 ``patches`` selected by ``target`` (kind, name, labelSelector).
Any other field fails the build, so a kustomization that outgrows this subset fails the tests
instead of being half-understood. Where ``kubectl`` is on PATH, test_k8s.py checks that this
build equals ``kubectl kustomize``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "patches"}

#: Kinds without a namespace (the ones k8s/ might plausibly hold).
CLUSTER_SCOPED = {
    "Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "StorageClass", "PersistentVolume", "RuntimeClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


class KustomizeError(AssertionError):
    """A kustomization this subset cannot build, or one that is wrong."""


@dataclass
class Build:
    """Output of one kustomization and the files it read."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    resource_files: set[Path] = field(default_factory=set)
    patch_files: set[Path] = field(default_factory=set)
    kustomizations: set[Path] = field(default_factory=set)


def load_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document of a file."""
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def kustomization_file(directory: Path) -> Path:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            return directory / name
    raise KustomizeError(f"{directory}: no kustomization.yaml")


def matches_target(resource: dict[str, Any], target: dict[str, Any]) -> bool:
    """Whether a patch target selects a resource (exact kind/name, equality label selector)."""
    unknown = set(target) - {"kind", "name", "labelSelector", "group", "version"}
    if unknown:
        raise KustomizeError(f"unsupported patch target fields {sorted(unknown)}")
    if "kind" in target and resource.get("kind") != target["kind"]:
        return False
    if "name" in target and resource["metadata"].get("name") != target["name"]:
        return False
    api_group, _, api_version = resource.get("apiVersion", "").rpartition("/")
    if "group" in target and api_group != target["group"]:
        return False
    if "version" in target and api_version != target["version"]:
        return False
    labels = resource["metadata"].get("labels") or {}
    for term in filter(None, (target.get("labelSelector") or "").split(",")):
        if "=" not in term or "!=" in term:
            raise KustomizeError(f"unsupported label selector term {term!r}")
        key, value = (part.strip() for part in term.replace("==", "=").split("="))
        if labels.get(key) != value:
            return False
    return True


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} does not start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json6902(resource: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add, replace and remove on a copy of `resource`."""
    result = copy.deepcopy(resource)
    for operation in operations:
        op, parts = operation.get("op"), _pointer(operation.get("path", ""))
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op in ("add", "replace"):
            if op == "replace" and isinstance(parent, dict) and last not in parent:
                raise KustomizeError(f"replace of missing {operation['path']}")
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, copy.deepcopy(operation["value"]))
                else:
                    parent[index] = copy.deepcopy(operation["value"])
            else:
                parent[last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise KustomizeError(f"unsupported JSON 6902 op {op!r}")
    return result


def build(directory: Path) -> Build:
    """``kustomize build directory`` for the supported subset."""
    directory = directory.resolve()
    path = kustomization_file(directory)
    spec = load_documents(path)[0]
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields {sorted(unknown)} are outside the tested subset")
    if spec.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind {spec.get('kind')!r} is not Kustomization")
    out = Build(kustomizations={path})
    for entry in spec.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            sub = build(target)
            out.resources += sub.resources
            out.resource_files |= sub.resource_files
            out.patch_files |= sub.patch_files
            out.kustomizations |= sub.kustomizations
        elif target.is_file():
            out.resources += load_documents(target)
            out.resource_files.add(target)
        else:
            raise KustomizeError(f"{path}: resource {entry!r} does not exist")
    for patch in spec.get("patches") or []:
        patch_path = (directory / patch.get("path", "")).resolve()
        if "patch" in patch or not patch_path.is_file():
            raise KustomizeError(f"{path}: patch {patch} must name an existing file with `path`")
        operations = load_documents(patch_path)[0]
        if not isinstance(operations, list):
            raise KustomizeError(f"{patch_path}: only JSON 6902 patches (a list of operations) are supported")
        target = patch.get("target") or {}
        hits = [i for i, resource in enumerate(out.resources) if matches_target(resource, target)]
        if not hits:
            raise KustomizeError(f"{path}: patch {patch_path.name} target {target} selects nothing")
        for i in hits:
            out.resources[i] = apply_json6902(out.resources[i], operations)
        out.patch_files.add(patch_path)
    if spec.get("namespace"):
        for resource in out.resources:
            if resource.get("kind") not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = spec["namespace"]
    return out
