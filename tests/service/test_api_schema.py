"""Schemathesis against the running API, bounded: every operation of the OpenAPI document, with
generated bodies, paths and queries, never answers 500, and every error is a JSON body with a
message (`{"error": ...}`)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.service.conftest import Service

#: Generated cases per operation in CI; `ODA_FUZZ_EXAMPLES` raises it for a longer run by hand.
EXAMPLES = 12


def test_api_never_fails_inside_and_every_error_says_why(service: Service) -> None:
    import os

    examples = int(os.environ.get("ODA_FUZZ_EXAMPLES", EXAMPLES))
    schema = schemathesis.openapi.from_url(f"{service.url}/api/v1/openapi.json")
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here, failing the test
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case) -> None:
            for user in ("ada", "alice", "rex"):  # admin, analyst, reader: every role's refusals too
                response = case.call(headers={"Authorization": f"Bearer {service.tokens[user]}"}, timeout=30)
                where = f"{case.method} {case.formatted_path} as {user}"
                assert response.status_code < 500, f"{where}: {response.text[:300]}"
                if response.status_code >= 400:
                    body = response.json()
                    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
                        where,
                        body,
                    )

        check()
    assert "POST /api/v1/runs" in seen and "GET /api/v1/runs/{run_id}/events" in seen
