"""Service settings, read from `SCIO_*` environment variables (or passed to `create_app`).

Nothing here runs at import: `get_settings()` builds the settings the first time it is called
and caches them; the app reads them through its `SettingsDep` dependency.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO_ROOT / "bundles" / "demo"

# Formats the decoder can be allowed to read. Anything else (TIFF, EPS, PSD, PDF, SVG, HEIC,
# BMP, ...) is refused by magic bytes before Pillow sees it. GIF is opt-in.
KNOWN_FORMATS = frozenset({"jpeg", "png", "webp", "gif"})
_FORMAT_ALIASES = {"jpg": "jpeg"}

Device = Literal["auto", "cuda", "tensorrt", "cpu"]
Precision = Literal["auto", "fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# the same choice on the command line (`predict`, `evaluate`)
PRECISION_HELP = (
    "backbone (and detector) graph: auto = the bundle's INT8 copies where the backbone runs on a "
    "CPU with 8-bit dot products (VNNI, AMX, Arm), as the service does, else float"
)
LogLevel = Literal["debug", "info", "warning", "error"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCIO_", frozen=True, extra="ignore")

    # what to serve
    bundle: Path = DEFAULT_BUNDLE  # model bundle directory
    device: Device = "auto"  # ONNX Runtime execution provider choice
    intra_op_threads: Annotated[int, Field(ge=0)] = 0  # ONNX Runtime threads; 0 = its default
    # backbone graph: auto = the bundle's INT8 copy where it runs on the CPU (if it has one),
    # else float; fp32 / int8 to choose (service.pipeline.backbone_precision); the detector's
    # INT8 copy, where the bundle has one, runs with the INT8 backbone
    precision: Precision = "auto"

    # what a request may carry
    max_upload_bytes: Annotated[int, Field(gt=0)] = 20 * 1024 * 1024  # body cap -> 413
    max_pixels: Annotated[int, Field(gt=0)] = 40_000_000  # width x height, from the header -> 413
    # seconds a request's body may take to arrive, before it is admitted -> 408
    body_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    # decoded images held at once (estimated from headers before decoding); beyond -> wait,
    # an image that alone needs more -> 413. Sized for the 3 GiB CPU container: the models and
    # runtime take about 0.4 GB, the pipeline's buffers about 0.5 GB at the default concurrency.
    decode_memory_mb: Annotated[int, Field(ge=64)] = 768
    # image parts of one /pose/batch request (all of them within max_upload_bytes together)
    max_images_per_request: Annotated[int, Field(ge=1, le=64)] = 8
    # comma-separated in the environment: SCIO_ALLOWED_FORMATS=jpeg,png,webp,gif
    allowed_formats: Annotated[frozenset[str], NoDecode] = frozenset({"jpeg", "png", "webp"})
    # 0 = decode every image at full size. N > 0: a JPEG whose long side is at least twice N is
    # decoded at 1/2, 1/4 or 1/8 size (in the DCT, several times faster) keeping the long side
    # >= N; /pose still answers in the original pixels. Small people lose detail: opt-in.
    decode_max_side: Annotated[int, Field(ge=0)] = 0

    # load: see service.limits
    max_concurrency: Annotated[int, Field(ge=1)] = 2  # pipeline calls in flight at once
    max_queue: Annotated[int, Field(ge=0)] = 32  # requests waiting; beyond -> 503 + Retry-After
    request_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # per-request deadline -> 504
    batch_window_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0  # 0 = no micro-batching
    max_batch: Annotated[int, Field(ge=1)] = 8  # images per pipeline call when batching

    # the server
    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # 0 = any free port
    log_level: LogLevel = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, with request_id
    drain_timeout_s: Annotated[int, Field(ge=1)] = 25  # after SIGTERM, for in-flight requests
    # connections (service.http_protocol): the request line and headers must arrive within
    # header_timeout_s (-> 408 and close); an idle keep-alive connection closes after
    # keep_alive_timeout_s; beyond max_connections a connection gets 503 and is closed; an
    # incomplete request (line + headers) larger than max_header_bytes gets 400
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    keep_alive_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    max_connections: Annotated[int, Field(ge=1)] = 512
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: object) -> frozenset[str]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple | set | frozenset):
            raise ValueError("expected a comma-separated list of image formats")
        names = {_FORMAT_ALIASES.get(s, s) for s in (str(i).strip().lower() for i in items) if s}
        unknown = names - KNOWN_FORMATS
        if unknown:
            raise ValueError(
                f"unsupported formats {sorted(unknown)}; choose from {sorted(KNOWN_FORMATS)}"
            )
        if not names:
            raise ValueError("allow at least one image format")
        return frozenset(names)

    @field_validator("device", "precision", "log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings from the environment, built once on first use."""
    return Settings()
