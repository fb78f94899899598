"""`scio-pose serve`: run the HTTP service under uvicorn.

Settings come from `SCIO_*` environment variables; `--host`, `--port` and `--bundle` override
them. On SIGTERM (or Ctrl+C) readiness turns 503 at once, uvicorn stops accepting connections,
in-flight requests get up to `drain_timeout_s` to finish, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fastapi and uvicorn are imported when the verb runs, not for its help
    from fastapi import FastAPI

    from service.app import EstimatorFactory
    from service.http_protocol import ServerLimits
    from service.settings import Settings

HELP = "run the HTTP pose service (FastAPI + ONNX Runtime)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to bind (default: SCIO_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: SCIO_PORT or 8000; 0 = any)")
    parser.add_argument("--bundle", type=Path, help="model bundle directory (default: SCIO_BUNDLE)")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.settings import Settings, get_settings

    overrides = {k: v for k in ("host", "port", "bundle") if (v := getattr(args, k)) is not None}
    try:
        settings = Settings(**overrides) if overrides else get_settings()  # validated either way
    except ValidationError as e:
        for err in e.errors():
            name = "SCIO_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"scio-pose serve: invalid setting {name}: {err['msg']}", file=sys.stderr)
        return 2
    for name in ("service", "uvicorn"):
        logging.getLogger(name).setLevel(settings.log_level.upper())
    from service.request_id import install_log_format

    install_log_format(settings.log_format)
    serve(settings)
    return 0


def serve(settings: Settings, estimator_factory: EstimatorFactory | None = None) -> None:
    """The app for these settings (and estimator factory, default the bundle's pipeline), served
    where the settings say until SIGTERM/SIGINT."""
    from service.app import create_app
    from service.http_protocol import ServerLimits

    serve_app(
        create_app(settings, estimator_factory),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        drain_timeout_s=settings.drain_timeout_s,
        limits=ServerLimits.from_settings(settings),
    )


def serve_app(
    app: FastAPI,
    *,
    host: str,
    port: int,
    log_level: str,
    drain_timeout_s: int,
    limits: ServerLimits | None = None,
) -> None:
    """Run `app` (from `create_app`) until SIGTERM/SIGINT, draining as described above, with
    these connection limits (`service.http_protocol`; default: the settings' defaults)."""
    import uvicorn

    from service.app import begin_drain
    from service.http_protocol import ServerLimits, protocol_class

    limits = limits or ServerLimits()
    from service.memory import tune_malloc

    tune_malloc()  # freed image buffers go back to the system (service.memory)

    class DrainingServer(uvicorn.Server):
        # uvicorn's signal handler only sets `should_exit`; its lifespan shutdown runs after the
        # connections have drained, too late to take the instance out of a load balancer.
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            begin_drain(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=drain_timeout_s,
        log_config=None,  # keep the CLI's logging setup
        http=protocol_class(limits),
        timeout_keep_alive=int(max(1, round(limits.keep_alive_timeout_s))),
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    server = DrainingServer(config)
    # uvicorn re-raises the signal it handled once it has shut down; under the default SIGTERM
    # action that would kill the process (exit 143) after a clean drain. Exit 0 instead.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
