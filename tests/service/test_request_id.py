"""X-Request-ID: taken or generated, echoed, and in the log lines of its request."""

from __future__ import annotations

import json
import logging

import pytest

from service.request_id import (
    REQUEST_ID,
    JsonFormatter,
    RequestIdFilter,
    request_id_from,
)
from service.settings import Settings
from tests.service.fakes import FakeEstimator
from tests.service.support import png_of, post_image, rgb_pattern, serve

PNG = png_of(rgb_pattern(32, 24))


def test_ids_are_echoed_or_generated() -> None:
    with serve(FakeEstimator()) as client:
        mine = client.get("/health/live", headers={"X-Request-ID": "req-42.a:b"})
        none = post_image(client, PNG)
        bad = client.get("/health/live", headers={"X-Request-ID": "x" * 200})
        error = client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert mine.headers["x-request-id"] == "req-42.a:b"
    generated = none.headers["x-request-id"]
    assert len(generated) == 32
    assert int(generated, 16) >= 0
    assert bad.headers["x-request-id"] != "x" * 200  # not a sane token: replaced
    assert error.status_code == 404
    assert error.headers["x-request-id"] == "err-1"  # errors carry it too


def test_request_id_validation() -> None:
    assert request_id_from("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in ("", "a b", "é", "x" * 129, "a\nb", None):
        assert request_id_from(bad) != bad


def test_log_records_carry_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    """Records emitted while a request runs (here the service's own error log of an unexpected
    failure) carry its ID; outside a request they carry "-"."""
    caplog.handler.addFilter(RequestIdFilter())
    fake = FakeEstimator()
    fake.fail = True
    with caplog.at_level(logging.ERROR), serve(fake) as client:
        r = client.post(
            "/pose",
            content=PNG,
            headers={"content-type": "image/png", "X-Request-ID": "trace-me"},
        )
    assert r.status_code == 500
    tagged = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "trace-me"]
    assert tagged, [(rec.getMessage(), getattr(rec, "request_id", None)) for rec in caplog.records]
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    RequestIdFilter().filter(rec)
    assert rec.request_id == "-"  # type: ignore[attr-defined]


def test_json_log_format() -> None:
    token = REQUEST_ID.set("abc")
    try:
        rec = logging.LogRecord("service.x", logging.WARNING, __file__, 1, "hello %s", ("w",), None)
        RequestIdFilter().filter(rec)
        line = json.loads(JsonFormatter().format(rec))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "abc"
    assert line["message"] == "hello w"
    assert line["level"] == "WARNING"
    assert Settings(log_format="JSON").log_format == "json"
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")


def test_access_log_lines_keep_short_queries_whole_and_cut_long_ones() -> None:
    from service.request_id import ShortQueryFilter

    def line(path: str) -> str:
        rec = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5", "POST", path, "1.1", 200), None,
        )  # fmt: skip
        ShortQueryFilter().filter(rec)
        return rec.getMessage()

    assert line("/pose?refine=false") == '127.0.0.1:5 - "POST /pose?refine=false HTTP/1.1" 200'
    long = "boxes=" + "[1,2,3,4]," * 300
    out = line("/pose?" + long)
    assert len(out) < 250
    assert f"(+{len(long) - 100} chars)" in out
