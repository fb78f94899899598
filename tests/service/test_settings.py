"""Settings: defaults, SCIO_* environment variables, validation, caching."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import DEFAULT_BUNDLE, Settings, get_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"SCIO_{name.upper()}", raising=False)
    s = Settings()
    assert s.bundle == DEFAULT_BUNDLE
    assert DEFAULT_BUNDLE.parts[-2:] == ("bundles", "demo")
    assert s.allowed_formats == {"jpeg", "png", "webp"}
    assert (s.max_upload_bytes, s.max_pixels) == (20 * 1024 * 1024, 40_000_000)
    assert (s.batch_window_ms, s.device, s.port) == (0.0, "auto", 8000)
    assert s.precision == "auto"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCIO_BUNDLE", "/models/b1")
    monkeypatch.setenv("SCIO_DEVICE", "TensorRT")
    monkeypatch.setenv("SCIO_ALLOWED_FORMATS", " PNG, jpg ,gif")
    monkeypatch.setenv("SCIO_MAX_QUEUE", "3")
    monkeypatch.setenv("SCIO_BATCH_WINDOW_MS", "2.5")
    monkeypatch.setenv("SCIO_PRECISION", " FP32")
    s = Settings()
    assert s.precision == "fp32"
    assert s.bundle == Path("/models/b1")
    assert s.device == "tensorrt"
    assert s.allowed_formats == {"png", "jpeg", "gif"}
    assert (s.max_queue, s.batch_window_ms) == (3, 2.5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "tpu"),
        ("precision", "int4"),
        ("allowed_formats", "png,tiff"),
        ("allowed_formats", " , "),
        ("max_concurrency", "0"),
        ("max_queue", "-1"),
        ("request_timeout_s", "0"),
        ("batch_window_ms", "5000"),
        ("max_upload_bytes", "0"),
        ("port", "70000"),
        ("log_level", "loud"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"SCIO_{field.upper()}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_get_settings_is_built_once() -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()
