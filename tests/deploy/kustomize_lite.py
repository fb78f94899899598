"""Render the kustomize subset that k8s/ uses, so that CI can check the manifests without kubectl.

Supported, with kustomize's semantics and in its order (patches, namespace, labels, images):
- `resources`: YAML files and directories holding a kustomization.yaml (rendered first);
- `patches`: a strategic-merge patch file whose own kind and metadata.name name its target, or a
  JSON 6902 patch file (a list of add/replace/remove operations) with `target: {kind, name}`;
- `namespace`: set on every namespaced object;
- `labels`: `pairs` added to every object's metadata.labels (not to selectors or pod templates);
- `images`: `name` with `newName`, `newTag` and/or `digest`, on containers and init containers.

Anything else raises `UnsupportedError`, so a kustomization that outgrows this subset fails here
instead of rendering something different from what `kubectl apply -k` would apply.
tests/deploy/test_kustomize_lite.py compares the output with `kubectl kustomize` where kubectl is
installed.

    python -m tests.deploy.kustomize_lite k8s/overlays/gpu      # print the rendered YAML
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
# Kinds with no namespace. Unknown kinds (custom resources) are namespaced, as in kustomize.
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "RuntimeClass",
}
# Kinds whose namespace kustomize also rewrites inside the object: not handled here.
_NAMESPACE_REFERENCES = {
    "RoleBinding",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
}
# Strategic merge: the lists of built-in types that merge by a key (their patchMergeKey); every
# other list is replaced. Custom resources have no merge keys: their lists are always replaced.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}
_BUILTIN_GROUPS = {
    "",  # core: apiVersion v1
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
}


class UnsupportedError(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: str | Path) -> list[Obj]:
    """The objects `kubectl kustomize DIRECTORY` would print, as dicts (order not significant)."""
    root = Path(directory)
    kfile = next((root / n for n in KUSTOMIZATION_FILES if (root / n).is_file()), None)
    if kfile is None:
        raise FileNotFoundError(f"no kustomization file in {root}")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - _SUPPORTED_FIELDS
    if unknown:
        raise UnsupportedError(f"{kfile}: fields {sorted(unknown)} are not supported")

    objects: list[Obj] = []
    for entry in k.get("resources", []):
        path = root / entry
        objects.extend(render(path) if path.is_dir() else _load(path))
    _check_unique(objects, kfile)
    for patch in k.get("patches", []):
        _apply_patch(objects, root, patch, kfile)
    if "namespace" in k:
        _set_namespace(objects, k["namespace"])
    for spec in k.get("labels", []):
        _add_labels(objects, spec, kfile)
    for image in k.get("images", []):
        _set_image(objects, image, kfile)
    return objects


def key(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name): how kustomize tells objects apart."""
    meta = obj.get("metadata", {})
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _load(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _check_unique(objects: list[Obj], where: Path) -> None:
    keys = [key(o) for o in objects]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise ValueError(f"{where}: objects defined twice: {sorted(dupes)}")


def _find(objects: list[Obj], kind: str, name: str, where: Path) -> Obj:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(hits) != 1:
        raise ValueError(f"{where}: a patch targets {kind}/{name}, found {len(hits)} such objects")
    return hits[0]


# ---- patches ----


def _apply_patch(objects: list[Obj], root: Path, entry: Obj, where: Path) -> None:
    if set(entry) - {"path", "target"} or "path" not in entry:
        raise UnsupportedError(f"{where}: only patches with `path` (and `target`) are supported")
    content = yaml.safe_load((root / entry["path"]).read_text())
    target = entry.get("target")
    if isinstance(content, list):  # JSON 6902
        if not target or set(target) != {"kind", "name"}:
            raise UnsupportedError(f"{where}: a JSON 6902 patch needs `target: {{kind, name}}`")
        obj = _find(objects, target["kind"], target["name"], where)
        for op in content:
            _json6902(obj, op)
        return
    if target is not None:
        raise UnsupportedError(f"{where}: `target` on a strategic-merge patch is not supported")
    obj = _find(objects, content["kind"], content["metadata"]["name"], where)
    builtin = obj["apiVersion"].rpartition("/")[0] in _BUILTIN_GROUPS
    merged = _merge(obj, content, builtin)
    obj.clear()
    obj.update(merged)


def _merge(base: Any, patch: Any, builtin: bool, field: str = "") -> Any:
    """Strategic merge: maps merge key by key (null deletes), lists merge by key or are replaced."""
    if isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise UnsupportedError(f"patch directives {sorted(patch)} are not supported")
        out = dict(base) if isinstance(base, dict) else {}
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(out.get(k), v, builtin, k)
        return out
    if isinstance(patch, list) and isinstance(base, list) and builtin:
        merge_key = _list_merge_key(field, base + patch)
        if merge_key is not None:
            # As kustomize orders them: the patch's items (merged into the base's), in the
            # patch's order, then the base's other items in theirs.
            by_key = {item[merge_key]: item for item in base}
            merged = [_merge(by_key.get(item[merge_key]), item, builtin) for item in patch]
            patched = {item[merge_key] for item in patch}
            rest = [copy.deepcopy(item) for item in base if item[merge_key] not in patched]
            return merged + rest
    return copy.deepcopy(patch)


def _list_merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # containers' ports merge by containerPort, Services' by port
        keys = ("containerPort", "port")
        return next((k for k in keys if all(isinstance(i, dict) and k in i for i in items)), None)
    return _MERGE_KEYS.get(field)


def _json6902(obj: Obj, op: Obj) -> None:
    kind, path = op.get("op"), op.get("path", "")
    if kind not in ("add", "replace", "remove"):
        raise UnsupportedError(f"JSON patch op {kind!r} is not supported")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    parent: Any = obj
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[index] = copy.deepcopy(op["value"])
        else:
            del parent[index]
        return
    if kind != "add" and last not in parent:
        raise ValueError(f"JSON patch {kind} {path}: no such field")
    if kind == "remove":
        del parent[last]
    else:
        parent[last] = copy.deepcopy(op["value"])


# ---- namespace, labels, images ----


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] in _NAMESPACE_REFERENCES:
            raise UnsupportedError(f"namespace transformer on {obj['kind']} is not supported")
        if obj["kind"] == "Namespace":
            if obj["metadata"]["name"] != namespace:  # kustomize would rename it
                raise UnsupportedError(f"Namespace {obj['metadata']['name']} != {namespace}")
        elif obj["kind"] not in _CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def _add_labels(objects: list[Obj], spec: Obj, where: Path) -> None:
    if (
        set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
        or spec.get("includeSelectors")
        or spec.get("includeTemplates")
    ):
        raise UnsupportedError(f"{where}: only `labels: - pairs:` (metadata only) is supported")
    for obj in objects:
        obj["metadata"].setdefault("labels", {}).update(spec.get("pairs", {}))


def _set_image(objects: list[Obj], image: Obj, where: Path) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedError(f"{where}: images fields {sorted(image)} are not all supported")
    for obj in objects:
        if obj["kind"] in ("Pod", "CronJob"):
            raise UnsupportedError(f"images on a {obj['kind']} are not supported")
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = _split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def _split_image(ref: str) -> tuple[str, str, str]:
    """'reg:5000/a/b:tag@sha256:x' -> ('reg:5000/a/b', 'tag', 'sha256:x')."""
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :], digest
    return ref, "", digest


def main(argv: list[str]) -> int:
    docs = render(argv[0])
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
