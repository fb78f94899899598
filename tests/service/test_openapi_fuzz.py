"""Property-based run of the OpenAPI schema (schemathesis) against the app on the fake: no 5xx,
every status documented, every response matching its schema, invalid input refused with 4xx.

schemathesis is a dev-only tool and this test is skipped without it. Its pytest plugin
(`from_fixture` / `parametrize`) does not work with pytest 9.2 (it sets `Function._nodeid`), so
the cases come from its Hypothesis strategies instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402  (installed with schemathesis)
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.service.fakes import FakeEstimator, factory_for  # noqa: E402
from tests.service.support import png_of, rgb_pattern  # noqa: E402

PNG = png_of(rgb_pattern(32, 24))

OPERATIONS = [
    ("POST", "/pose"),
    ("POST", "/pose/render"),
    ("POST", "/pose/batch"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("HEAD", "/health/live"),
    ("HEAD", "/health/ready"),
    ("GET", "/info"),
    ("GET", "/metrics"),
]


@pytest.fixture
def api_schema() -> Iterator[Any]:
    """The schema of a fresh, ready app (schemathesis ends ASGI lifespans after every test)."""
    app = create_app(Settings(), factory_for(FakeEstimator(persons=2)))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    with asgi.get_client(schema.app) as client:
        for _ in range(500):
            if client.get("/health/ready").status_code == 200:
                break
            time.sleep(0.002)
    yield schema
    asgi.shutdown_lifespans()


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# Negative data exists only for operations that take input.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_conforms_to_the_schema(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        # Any bytes match the declared `format: binary` body, but only images are accepted, so a
        # schema-valid request may rightly get 415/422: positive acceptance does not apply.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()


@pytest.mark.parametrize("path", ["/pose", "/pose/render"])
def test_generated_parameters_with_a_real_image(api_schema: Any, path: str) -> None:
    """Random bytes never decode; with a real PNG the 200 answers are validated too."""
    strategy = api_schema[path]["POST"].as_strategy(body=PNG, media_type="image/png")

    @given(case=strategy)
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        assert response.status_code in (200, 422), response.text

    check()
