"""Run the service on a slow fake under the real `serve_app`, for the SIGTERM test.

usage: python -m tests.service.serve_fake DELAY_S   (binds 127.0.0.1 on a free port and logs it)
"""

from __future__ import annotations

import logging
import sys

from service.app import create_app
from service.serve import serve_app
from service.settings import Settings
from tests.service.fakes import FakeEstimator, factory_for


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    fake = FakeEstimator(delay_s=float(sys.argv[1]))
    app = create_app(Settings(), factory_for(fake))
    serve_app(app, host="127.0.0.1", port=0, log_level="info", drain_timeout_s=10)


if __name__ == "__main__":
    main()
