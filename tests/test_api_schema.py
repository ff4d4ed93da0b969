"""schemathesis against the served OpenAPI schema: a bounded run over every operation with an
operator token; no input may cause a server error (5xx)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.fix_api import Api

EXAMPLES = 12


def test_no_input_causes_a_server_error(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            pytest.fail(f"the served OpenAPI schema is invalid: {result.err()}")
        operations.append(result.ok())
    assert len(operations) >= 12  # every route is in the schema
    headers = api.headers(api.operator)
    tried: list[str] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        run()
        tried.append(op.label)
    assert "POST /api/agents/{agent_id}/kill" in tried and "GET /api/history" in tried
    # The run really reached the server: count the requests it served, by status.
    text = httpx.get(f"{api.url}/metrics", timeout=30).text
    served = [line for line in text.splitlines() if line.startswith("eventstore_http_requests_total{")]
    total = sum(float(line.rsplit(" ", 1)[1]) for line in served)
    assert total >= 3 * len(operations), served
    assert not [line for line in served if 'status="5' in line], served
