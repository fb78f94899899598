"""k8s/: every rendered object is valid for the Kubernetes API (or its CRD), and the manifests
agree with the service: ports, probe paths, settings, metrics, shutdown timing, security.

Rendered with tests/deploy/kustomize_lite.py (checked against kubectl in test_kustomize_lite.py).
Built-in kinds are validated with kubernetes-validate's bundled (offline, strict) schemas for the
oldest Kubernetes the manifests support and the newest it knows; ScaledObject and ServiceMonitor
against the subset schemas in tests/deploy/crd_schemas/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.kustomize_lite import render
from tests.deploy.support import (
    DOCKERFILES,
    REPO,
    scaled_object,
    setting_env_names,
    settings_from_env,
)

OVERLAYS = {p.name: p for p in sorted((REPO / "k8s" / "overlays").iterdir()) if p.is_dir()}
MIN_KUBERNETES = "1.30"  # preStop `sleep` (beta and on by default from 1.30)
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

Obj = dict[str, Any]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def objects(variant: str) -> dict[str, Obj]:
    """The overlay's objects by kind (one of each kind here), rendered once per overlay: the
    tests only read them."""
    out: dict[str, Obj] = {}
    for obj in render(OVERLAYS[variant]):
        assert obj["kind"] not in out, f"two {obj['kind']} objects: extend these tests"
        out[obj["kind"]] = obj
    return out


def _container(objects: dict[str, Obj]) -> Obj:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    result: Obj = container
    return result


def _config(objects: dict[str, Obj]) -> dict[str, str]:
    data: dict[str, str] = objects["ConfigMap"]["data"]
    return data


# ---- schemas ----


def test_expected_objects(objects: dict[str, Obj]) -> None:
    assert set(objects) == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "ServiceMonitor",
    }


def test_every_object_validates_against_its_schema(objects: dict[str, Obj]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="dev extra: kubernetes-validate")
    import jsonschema

    versions = [MIN_KUBERNETES, kv.latest_version()]
    for obj in objects.values():
        schema_file = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema_file is not None:
            schema = json.loads((Path(__file__).parent / "crd_schemas" / schema_file).read_text())
            jsonschema.Draft202012Validator(schema).validate(obj)
            continue
        for version in versions:
            try:
                kv.validate(obj, version, strict=True)
            except kv.SchemaNotFoundError as e:
                pytest.fail(f"no schema for {obj['kind']}: add one to CRD_SCHEMAS ({e.message})")


def test_crd_schemas_reject_typos() -> None:
    """The subset schemas are strict: a misspelt field fails instead of being ignored by KEDA."""
    jsonschema = pytest.importorskip("jsonschema", reason="comes with kubernetes-validate")
    scaled = scaled_object(OVERLAYS["cpu"])
    scaled["spec"]["triggers"][0]["metadata"]["treshold"] = "2"
    schema_file = (
        Path(__file__).parent / "crd_schemas" / CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"]
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, json.loads(schema_file.read_text()))


def test_autoscaler_behavior_is_a_valid_hpa_behavior(objects: dict[str, Obj]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="dev extra: kubernetes-validate")
    spec = objects["ScaledObject"]["spec"]
    hpa = {  # what KEDA builds from the ScaledObject
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-scio-pose"},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kv.validate(hpa, MIN_KUBERNETES, strict=True)


# ---- the manifests and the service agree ----


def test_probes_and_ports_are_what_the_service_serves(
    objects: dict[str, Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(objects)
    (port,) = container["ports"]
    assert port["containerPort"] == settings_from_env(_config(objects), monkeypatch).port
    routes = _served_paths()
    probes = {
        name: container[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] in (port["name"], port["containerPort"])
    assert probes["livenessProbe"]["path"] == "/health/live"  # never the model: no restart loops
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["startupProbe"]["path"] == "/health/ready"

    service_port = objects["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    (endpoint,) = objects["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["path"] in routes


def _served_paths() -> set[str]:
    """The app's GET paths: in its OpenAPI schema, and answered (no lifespan: not ready) by
    something other than a 404."""
    app = create_app(Settings())
    paths = {p for p, ops in app.openapi()["paths"].items() if "get" in ops}
    client = TestClient(app)  # not entered: the lifespan does not run, no model is loaded
    return {p for p in paths if client.get(p).status_code != 404}


def test_environment_holds_real_settings_with_valid_values(
    objects: dict[str, Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(objects)
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
    assert refs == [objects["ConfigMap"]["metadata"]["name"]]
    env = {**_config(objects), **{e["name"]: e["value"] for e in container.get("env", [])}}
    unknown = {k for k in env if k.startswith("SCIO_")} - setting_env_names()
    assert not unknown, f"not settings of the service: {unknown}"
    assert all(k.startswith("SCIO_") for k in env), "only the service's settings"
    assert settings_from_env(env, monkeypatch).host == "0.0.0.0"


def test_autoscaler_queries_metrics_the_service_exports(objects: dict[str, Obj]) -> None:
    trigger = objects["ScaledObject"]["spec"]["triggers"][0]
    query = trigger["metadata"]["query"]
    selectors = re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", query)
    assert selectors, query
    names = {name for name, _ in selectors}
    assert names <= _exported_series(), names - _exported_series()
    assert names & {"scio_pose_pipeline_calls_in_flight", "scio_pose_queue_depth"}
    assert set(re.findall(r"\bscio_pose_\w+", query)) == names, "every metric has its selector"
    for (
        _,
        matchers,
    ) in selectors:  # the series of this Deployment, as the ServiceMonitor labels them
        labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
        assert labels == {
            "namespace": objects["Deployment"]["metadata"]["namespace"],
            "service": objects["Service"]["metadata"]["name"],
        }
    target = objects["ScaledObject"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objects["Deployment"]["metadata"]["name"],
    )
    assert "replicas" not in objects["Deployment"]["spec"], "the autoscaler owns the count"


def _exported_series() -> set[str]:
    """The series names /metrics exposes (a labelled family exports none until first used)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_shutdown_outlasts_the_drain(
    objects: dict[str, Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    pre_stop = _container(objects)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "the kubelet's sleep: no shell needed in the image"
    sleep_s = pre_stop["sleep"]["seconds"]
    settings = settings_from_env(_config(objects), monkeypatch)
    # The load balancers must have dropped the pod before SIGTERM: uvicorn closes its listener
    # about 0.1 s after SIGTERM, so readiness turning 503 cannot be what drains them.
    assert sleep_s >= 5
    assert pod["terminationGracePeriodSeconds"] > sleep_s + settings.drain_timeout_s
    assert settings.drain_timeout_s >= settings.request_timeout_s


def test_startup_probe_allows_for_loading_and_warm_up(
    variant: str, objects: dict[str, Obj]
) -> None:
    probe = _container(objects)["startupProbe"]
    budget_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget_s >= {"gpu": 600, "cpu": 300}[variant]
    for name in ("readinessProbe", "livenessProbe"):
        assert "initialDelaySeconds" not in _container(objects)[name], (
            "the startup probe gates them"
        )


def test_pods_run_restricted_as_the_image_user(variant: str, objects: dict[str, Obj]) -> None:
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = _container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    user = Dockerfile(DOCKERFILES[variant]).instructions("runtime", "USER")[-1].args
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    writable = {
        m["mountPath"]: m["name"] for m in container["volumeMounts"] if not m.get("readOnly")
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(writable) == {"/tmp"}, "only /tmp is writable (a bundle volume mounts readOnly)"
    assert "emptyDir" in volumes[writable["/tmp"]]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # they would inject SCIO_POSE_* variables
    labels = objects["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_resources_fit_the_variant(
    variant: str, objects: dict[str, Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = _container(objects)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])
    gpus = resources["limits"].get("nvidia.com/gpu")
    assert gpus == (1 if variant == "gpu" else None)
    settings = settings_from_env(_config(objects), monkeypatch)
    assert settings.device == {"gpu": "cuda", "cpu": "cpu"}[variant]
    cpu_limit = float(str(resources["limits"]["cpu"]).removesuffix("m")) / (
        1000 if str(resources["limits"]["cpu"]).endswith("m") else 1
    )
    assert 1 <= settings.intra_op_threads <= cpu_limit, "ONNX Runtime threads within the limit"


def test_selectors_hold_together(objects: dict[str, Obj]) -> None:
    template = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selected = [
        objects["Deployment"]["spec"]["selector"]["matchLabels"],
        objects["Service"]["spec"]["selector"],
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selected:
        assert selector.items() <= template.items()
    monitor = objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= objects["Service"]["metadata"]["labels"].items()
    minimum = objects["ScaledObject"]["spec"]["minReplicaCount"]
    assert minimum > objects["PodDisruptionBudget"]["spec"]["maxUnavailable"], "a drain keeps one"
