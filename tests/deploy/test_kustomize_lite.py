"""tests/deploy/kustomize_lite.py against hand-worked kustomizations and, where kubectl is
installed, against `kubectl kustomize` on those and on k8s/overlays/*."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.kustomize_lite import UnsupportedError, key, render
from tests.deploy.support import REPO

OVERLAYS = sorted(p for p in (REPO / "k8s" / "overlays").iterdir() if p.is_dir())


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


BASE = {
    "base/kustomization.yaml": """\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        namespace: shop
        labels:
          - pairs: {team: vision}
        resources: [ns.yaml, app.yaml]
        """,
    "base/ns.yaml": """\
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        """,
    "base/app.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          labels: {app: web}
        spec:
          selector: {matchLabels: {app: web}}
          template:
            metadata: {labels: {app: web}}
            spec:
              tolerations: [{key: a, operator: Exists}]
              containers:
                - name: web
                  image: web:1
                  env: [{name: A, value: "1"}, {name: B, value: "2"}]
                  ports: [{name: http, containerPort: 80}]
                  resources: {limits: {cpu: "1", memory: 1Gi}}
                - name: side
                  image: docker.io/lib/side:2
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          selector: {app: web}
          ports: [{name: http, port: 80, targetPort: http}]
        ---
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        spec:
          items: [{name: x, size: 1}, {name: y, size: 2}]
          knob: 1
        """,
    "overlay/kustomization.yaml": """\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources: [../base]
        images:
          - {name: web, newName: reg.io/web, newTag: "2"}
          - {name: docker.io/lib/side, digest: "sha256:abc"}
        patches:
          - path: web.yaml
          - path: widget.yaml
          - path: widget-json.yaml
            target: {kind: Widget, name: w}
        """,
    "overlay/web.yaml": """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          template:
            spec:
              tolerations: [{key: b, operator: Exists}]
              containers:
                - name: web
                  env: [{name: B, value: "20"}, {name: C, value: "3"}]
                  resources: {limits: {memory: null, nvidia.com/gpu: 1}}
        """,
    "overlay/widget.yaml": """\
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        spec:
          items: [{name: y, size: 3}]
        """,
    "overlay/widget-json.yaml": """\
        - {op: replace, path: /spec/knob, value: 2}
        - {op: add, path: /spec/extra, value: {a: 1}}
        """,
}


@pytest.fixture
def rendered(tmp_path: Path) -> dict[tuple[str, str, str], Any]:
    _write(tmp_path, BASE)
    return {key(o): o for o in render(tmp_path / "overlay")}


def test_resources_namespace_and_labels(rendered: dict[tuple[str, str, str], Any]) -> None:
    assert set(rendered) == {
        ("Namespace", "", "shop"),
        ("Deployment", "shop", "web"),
        ("Service", "shop", "web"),
        ("Widget", "shop", "w"),
    }
    for obj in rendered.values():
        assert obj["metadata"]["labels"]["team"] == "vision"
    web = rendered["Deployment", "shop", "web"]
    # metadata only: selectors and pod templates keep their labels
    assert web["spec"]["selector"] == {"matchLabels": {"app": "web"}}
    assert web["spec"]["template"]["metadata"]["labels"] == {"app": "web"}


def test_strategic_merge_follows_the_merge_keys(rendered: dict[tuple[str, str, str], Any]) -> None:
    pod = rendered["Deployment", "shop", "web"]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "b", "operator": "Exists"}]  # no merge key: replaced
    web, side = pod["containers"]  # merged by name: the patch's items first, as kustomize does
    assert web["env"] == [
        {"name": "B", "value": "20"},
        {"name": "C", "value": "3"},
        {"name": "A", "value": "1"},
    ]
    assert web["resources"] == {"limits": {"cpu": "1", "nvidia.com/gpu": 1}}  # null deletes
    assert web["ports"] == [{"name": "http", "containerPort": 80}]
    assert side["name"] == "side"


def test_custom_resources_replace_lists_and_take_json_patches(
    rendered: dict[tuple[str, str, str], Any],
) -> None:
    spec = rendered["Widget", "shop", "w"]["spec"]
    assert spec == {"items": [{"name": "y", "size": 3}], "knob": 2, "extra": {"a": 1}}


def test_images(rendered: dict[tuple[str, str, str], Any]) -> None:
    pod = rendered["Deployment", "shop", "web"]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == [
        "reg.io/web:2",
        "docker.io/lib/side@sha256:abc",
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("commonLabels", "{a: b}"),
        ("configMapGenerator", "[{name: c, literals: [A=1]}]"),
        ("labels", "[{pairs: {a: b}, includeSelectors: true}]"),
        ("namePrefix", "x-"),
    ],
)
def test_anything_else_is_refused(tmp_path: Path, field: str, value: str) -> None:
    _write(tmp_path, BASE)
    with (tmp_path / "overlay" / "kustomization.yaml").open("a") as f:
        f.write(f"{field}: {value}\n")
    with pytest.raises(UnsupportedError):
        render(tmp_path / "overlay")


def test_patch_without_a_target_object_fails(tmp_path: Path) -> None:
    _write(tmp_path, BASE)
    _write(
        tmp_path,
        {"overlay/web.yaml": BASE["overlay/web.yaml"].replace("name: web}", "name: nope}")},
    )
    with pytest.raises(ValueError, match="Deployment/nope"):
        render(tmp_path / "overlay")


def _kubectl(directory: Path) -> dict[tuple[str, str, str], Any]:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [binary, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {key(o): o for o in yaml.safe_load_all(out) if o}


def test_same_as_kubectl_on_the_worked_example(
    tmp_path: Path, rendered: dict[tuple[str, str, str], Any]
) -> None:
    assert _kubectl(tmp_path / "overlay") == rendered


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_same_as_kubectl_on_the_overlays(overlay: Path) -> None:
    reference = _kubectl(overlay)
    assert {key(o): o for o in render(overlay)} == reference
