"""schemathesis drives every operation of the live OpenAPI schema with generated requests, valid
and invalid: no 5xx, and every error in OpenAI's shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.support.apps import assert_openai_error

SCHEMA = schemathesis.pytest.from_fixture("api_schema")
ANSWERS: dict[int, int] = {}  # status -> count, printed at the end (pytest -s)


@pytest.fixture(scope="module")
def api_schema(serve_url):
    schema = schemathesis.openapi.from_url(serve_url + "/openapi.json")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    database="none")
    yield schema
    print(f"\nschemathesis requests by status: {dict(sorted(ANSWERS.items()))}")


def openai_error_shape(ctx, response, case) -> None:
    ANSWERS[response.status_code] = ANSWERS.get(response.status_code, 0) + 1
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_without_5xx_and_errors_in_openai_shape(case):
    case.call_and_validate(checks=[not_a_server_error, openai_error_shape], timeout=60)
