"""Request IDs: `X-Request-ID` taken from the client (when it is a sane token) or generated,
echoed on the response, and attached to every log record emitted while the request runs, in the
text format (`[id]`) or the optional JSON format (`SCIO_LOG_FORMAT=json`)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def request_id_from(value: str | None) -> str:
    """The client's ID if it is 1-128 characters of [A-Za-z0-9._:-], else a new one."""
    if value is not None and _VALID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Pure ASGI: sets REQUEST_ID for the request's task and adds the header to the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(HEADER.encode())
        rid = request_id_from(raw.decode("latin-1") if raw is not None else None)
        token = REQUEST_ID.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id` attribute ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


MAX_LOGGED_QUERY = 100  # characters of a query string kept in an access-log line


class ShortQueryFilter(logging.Filter):
    """Shortens long query strings in uvicorn's access-log lines (100 boxes are 3 KB)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path, sep, query = args[2].partition("?")
            if sep and len(query) > MAX_LOGGED_QUERY:
                cut = (
                    f"{path}?{query[:MAX_LOGGED_QUERY]}...(+{len(query) - MAX_LOGGED_QUERY} chars)"
                )
                record.args = (*args[:2], cut, *args[3:])
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def install_log_format(fmt: str) -> None:
    """Put the request ID into every handler of the root logger, as text or as JSON lines."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        handler.setFormatter(formatter)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ShortQueryFilter) for f in access.filters):
        access.addFilter(ShortQueryFilter())


__all__ = [
    "HEADER",
    "REQUEST_ID",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "ShortQueryFilter",
    "install_log_format",
    "request_id_from",
]
