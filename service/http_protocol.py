"""uvicorn's h11 protocol with the limits a public server needs and JSON errors where uvicorn
answers by itself.

- A connection cap (`SCIO_MAX_CONNECTIONS`): a connection beyond it gets a JSON 503
  `too_many_connections` and is closed at once (uvicorn's own `limit_concurrency` answers plain
  text and counts tasks as well as connections).
- A header timeout (`SCIO_HEADER_TIMEOUT_S`): from the moment a connection opens, or a keep-alive
  connection finishes a response, the next request's line and headers must arrive within it;
  otherwise a JSON 408 `header_timeout` if part of a request came, and the connection is closed.
  uvicorn has none: its keep-alive timer stops at the first byte, so a client sending half a
  header line held a connection forever.
- Keep-alive timeout (`SCIO_KEEP_ALIVE_TIMEOUT_S`) and the largest incomplete request, request
  line and headers together (`SCIO_MAX_HEADER_BYTES`), are uvicorn's settings.
- Malformed HTTP (an over-long request line, `Content-Length: -5`, ...): uvicorn's 400 with a
  JSON body `bad_http_request` instead of its plain text.

The errors use the body shape of every other error: {"error": {"code", "message"}}.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from service.settings import Settings


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 512
    max_header_bytes: int = 16 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            max_connections=settings.max_connections,
            max_header_bytes=settings.max_header_bytes,
        )


def raw_json_response(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for when no request was parsed
    (h11 will not send a response then)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol_class(limits: ServerLimits) -> type[H11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""

    class LimitedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _armed_cycle: Any = None
        _partial = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(
                    raw_json_response(
                        503,
                        "Service Unavailable",
                        "too_many_connections",
                        f"the server holds its maximum of {limits.max_connections} connections "
                        "(SCIO_MAX_CONNECTIONS); retry later",
                    )
                )
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._header_timer is not None:
                self._partial = True
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_cycle:
                self._cancel_header_timer()  # the request line and headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def send_400_response(self, msg: str) -> None:
            body = json.dumps(
                {"error": {"code": "bad_http_request", "message": f"malformed HTTP: {msg}"}}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            try:
                self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers)))
                self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
                self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            except h11.LocalProtocolError:  # h11 is past sending a response on this connection
                pass
            self.transport.close()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._armed_cycle = self.cycle
            self._partial = False
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.cycle is not self._armed_cycle:
                return
            if self._partial:
                self.transport.write(
                    raw_json_response(
                        408,
                        "Request Timeout",
                        "header_timeout",
                        f"the request line and headers did not arrive within "
                        f"{limits.header_timeout_s:g} s (SCIO_HEADER_TIMEOUT_S)",
                    )
                )
            self.transport.close()

    return LimitedH11Protocol
