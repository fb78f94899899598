"""The end of a drain, answered in JSON.

After SIGTERM uvicorn gives in-flight requests `drain_timeout_s`, then cancels whatever still
runs and answers each cancelled request itself: a plain-text `500 Internal Server Error`, with
an ERROR traceback of the `CancelledError` in the log. `DrainGuardMiddleware` (pure ASGI, inside
the request-ID middleware) catches that cancellation while no response has started and answers
the JSON 503 `shutting_down` every other shutdown refusal uses, logged as one INFO line: a
planned shutdown is not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_BODY = json.dumps(
    {"error": {"code": "shutting_down", "message": "the service is shutting down"}}
).encode()


class DrainGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:  # half an answer cannot be replaced; uvicorn closes the connection
                raise
            log.info("shutdown: %s %s cancelled unanswered: 503", scope["method"], scope["path"])
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_BODY)).encode()),
                        (b"connection", b"close"),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _BODY, "more_body": False})
