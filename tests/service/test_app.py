"""The app around the pipeline: startup and readiness, /info, /metrics, the error shape,
dependency overrides, and no torch."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import begin_drain, create_app
from service.deps import get_estimator
from service.settings import Settings
from tests.service.fakes import FakeEstimator, factory_for
from tests.service.support import png_of, post_image, rgb_pattern, serve, wait_ready

PNG = png_of(rgb_pattern(32, 24))


def test_importing_and_creating_the_app_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings(), lambda s: None)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'service.pipeline' not in sys.modules, 'the pipeline was imported at creation'\n"
        "import service.pipeline  # what the default factory loads in the lifespan\n"
        "assert 'torch' not in sys.modules, 'the pipeline imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_health_info_and_ready_when_loaded() -> None:
    fake = FakeEstimator()
    with serve(fake) as client:
        assert client.get("/health/live").json() == {"status": "alive"}
        assert client.get("/health/ready").json() == {"status": "ready"}
        for path in ("/health/live", "/health/ready"):  # load balancers probe with HEAD
            head = client.head(path)
            assert head.status_code == 200, path
            assert head.content == b""
        info = client.get("/info").json()
    assert fake.warmed
    assert info["bundle"] == {"name": "fake-bundle", "version": "0.0.1", "spec": "coco17"}
    assert info["keypoint_spec"] == "coco17"
    assert len(info["keypoint_names"]) == 17
    assert info["refine_available"] is True


def test_live_answers_and_ready_waits_while_the_model_loads() -> None:
    gate = threading.Event()

    def slow_factory(settings: Settings) -> FakeEstimator:
        gate.wait(5)
        return FakeEstimator()

    with serve(factory=slow_factory, ready=False) as client:
        assert client.get("/health/live").status_code == 200
        r = client.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "loading"
        assert client.head("/health/ready").status_code == 503
        assert post_image(client, PNG).status_code == 503
        gate.set()
        wait_ready(client)
        assert post_image(client, PNG).status_code == 200


def test_failed_load_keeps_the_app_up_and_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    def broken(settings: Settings) -> FakeEstimator:
        raise FileNotFoundError(f"{settings.bundle}/bundle.json")

    with serve(factory=broken, ready=False, bundle="/nowhere") as client:
        wait_for = client.get("/health/ready")
        for _ in range(200):
            if wait_for.json()["error"]["code"] != "loading":
                break
            wait_for = client.get("/health/ready")
        assert wait_for.status_code == 503
        error = wait_for.json()["error"]
        assert error["code"] == "load_failed"
        assert "/nowhere" not in error["message"]  # server paths stay in the log
        assert "FileNotFoundError" in error["message"]
        assert client.get("/health/live").status_code == 200
        pose = post_image(client, PNG)
        assert pose.status_code == 503
        assert "FileNotFoundError" in pose.json()["error"]["message"]
        assert client.get("/info").status_code == 503
        assert "scio_pose_model_ready 0.0" in client.get("/metrics").text
    assert "could not load the model bundle /nowhere" in caplog.text


def test_failed_warmup_is_not_ready() -> None:
    fake = FakeEstimator(warmup_error=RuntimeError("no CUDA device"))
    with serve(fake, ready=False) as client:
        for _ in range(200):
            r = client.get("/health/ready")
            if r.json()["error"]["code"] == "load_failed":
                break
        assert "RuntimeError" in r.json()["error"]["message"]


def test_default_factory_without_a_bundle_starts_not_ready() -> None:
    app = create_app(Settings(bundle=Path("/nonexistent-bundle")))
    with TestClient(app) as client:
        for _ in range(400):
            r = client.get("/health/ready")
            if r.json()["error"]["code"] == "load_failed":
                break
        assert r.status_code == 503
        assert "/nonexistent-bundle" not in r.json()["error"]["message"]


def test_draining_turns_ready_503_but_serves_in_flight_work() -> None:
    with serve(FakeEstimator()) as client:
        begin_drain(client.app)  # type: ignore[arg-type]
        r = client.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "draining"
        assert post_image(client, PNG).status_code == 200
        assert client.get("/health/live").status_code == 200


def test_dependency_override_swaps_the_estimator() -> None:
    other = FakeEstimator(persons=3)
    app = create_app(Settings(), factory_for(FakeEstimator(persons=1)))
    app.dependency_overrides[get_estimator] = lambda: other
    with TestClient(app) as client:
        r = post_image(client, PNG)
    assert r.status_code == 200
    assert len(r.json()["persons"]) == 3
    assert len(other.seen) == 1


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("GET", "/pose", 405, "method_not_allowed"),
        ("POST", "/pose?min_score=2", 422, "validation_error"),
        ("POST", "/pose?format=xml", 422, "validation_error"),
        ("POST", "/pose?max_persons=0", 422, "validation_error"),
    ],
)
def test_errors_are_json_with_code_and_message(
    method: str, path: str, status: int, code: str
) -> None:
    with serve() as client:
        r = client.request(method, path, content=PNG, headers={"content-type": "image/png"})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code


def test_unexpected_exceptions_are_a_json_500_without_a_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Exploding(FakeEstimator):
        @property
        def info(self) -> dict[str, object]:
            raise KeyError("secret internals")

    with serve(Exploding(), raise_server_exceptions=False) as client:
        r = client.get("/info")
    assert r.status_code == 500
    assert r.json() == {
        "error": {"code": "internal_error", "message": "internal server error (see the server log)"}
    }
    assert "secret internals" not in r.text
    assert "secret internals" in caplog.text


def test_metrics_report_requests_stages_batches_and_scio() -> None:
    with serve(FakeEstimator(persons=2)) as client:
        post_image(client, PNG)
        post_image(client, b"not an image")
        client.get("/openapi.json")
        client.get("/no-such-page")
        text = client.get("/metrics").text
    expected = [
        # FastAPI's own pages are counted under their paths, not as "unmatched"
        'scio_pose_http_requests_total{method="GET",route="/openapi.json",status="200"} 1.0',
        'scio_pose_http_requests_total{method="GET",route="unmatched",status="404"} 1.0',
        'scio_pose_http_requests_total{method="POST",route="/pose",status="200"} 1.0',
        'scio_pose_http_requests_total{method="POST",route="/pose",status="415"} 1.0',
        'scio_pose_http_request_duration_seconds_count{route="/pose"} 2.0',
        'scio_pose_stage_duration_seconds_count{stage="backbone"} 1.0',
        'scio_pose_stage_duration_seconds_count{stage="decode"} 1.0',
        'scio_pose_stage_duration_seconds_count{stage="queue"} 1.0',
        'scio_pose_rejections_total{reason="unsupported_media_type"} 1.0',
        "scio_pose_batch_size_count 1.0",
        "scio_pose_model_ready 1.0",
        "scio_pose_pipeline_calls_in_flight 0.0",
        "scio_pose_queue_depth 0.0",
        # the fake examines 6 groups per person and accepts every other one
        'scio_pose_scio_keypoints_total{accepted="true"} 6.0',
        'scio_pose_scio_keypoints_total{accepted="false"} 6.0',
        "scio_pose_scio_acceptance_ratio 0.5",
        "scio_pose_scio_displacement_pixels_count 12.0",  # every examined keypoint
        # the fake's first person has a calibrated confidence (0.65), the second none
        "scio_pose_person_confidence_count 1.0",
        'scio_pose_person_confidence_bucket{le="0.6"} 0.0',
        'scio_pose_person_confidence_bucket{le="0.7"} 1.0',
    ]
    missing = [line for line in expected if line not in text]
    assert not missing, missing


def test_each_app_has_its_own_metrics_registry() -> None:
    with serve() as a, serve() as b:
        post_image(a, PNG)
        assert 'route="/pose"' in a.get("/metrics").text
        assert 'route="/pose"' not in b.get("/metrics").text


def test_docs_page_is_self_contained() -> None:
    """/docs renders the API from the schema with no script or stylesheet from elsewhere (the
    default Swagger UI loads from a CDN and is blank offline)."""
    with serve() as client:
        r = client.get("/docs")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        page = r.text
        for route in ("/pose", "/pose/batch", "/pose/render", "/health/ready", "/metrics"):
            assert f"<code>{route}</code>" in page
        assert "refine" in page
        assert "http://" not in page
        assert "https://" not in page
        assert "<script" not in page
        assert client.get("/redoc").status_code == 404
        metrics = client.get("/metrics").text
        assert 'route="/docs"' in metrics
