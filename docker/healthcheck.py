"""The images' HEALTHCHECK: exit 0 when GET /health/live on this container's port answers 200.

Liveness only (the process is up and its event loop answers), so a bundle that is still loading or
warming up is no reason for Docker to mark the container unhealthy. Kubernetes ignores HEALTHCHECK
and uses the probes in k8s/. Standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("SCIO_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health/live"
    # No proxies: an HTTP(S)_PROXY in the container's environment must not catch a loopback check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as e:  # URLError, HTTPError, timeouts and refused connections
        print(f"{url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
