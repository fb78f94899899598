"""Run the service on a slow fake under the real `serve_app`, for the SIGTERM test.

usage: python -m tests.service.serve_fake DELAY_S [DRAIN_S]
(binds 127.0.0.1 on a free port and logs it; DRAIN_S: the drain timeout, default 10)
"""

from __future__ import annotations

import logging
import sys

from service.app import create_app
from service.http_protocol import ServerLimits
from service.serve import serve_app
from service.settings import Settings
from tests.service.fakes import FakeEstimator, factory_for


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    fake = FakeEstimator(delay_s=float(sys.argv[1]), keep_images=False)
    app = create_app(Settings(), factory_for(fake))
    drain = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    limits = ServerLimits.from_settings(Settings())  # SCIO_* from the environment
    serve_app(app, host="127.0.0.1", port=0, log_level="info", drain_timeout_s=drain, limits=limits)


if __name__ == "__main__":
    main()
