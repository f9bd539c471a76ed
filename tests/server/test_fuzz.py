"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

Every generated request must get a well-formed answer: no 5xx, and JSON errors that carry
`error` and `status`. Requests run in-process against a real engine on a real SQLite file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service


def fuzz_app_instance(tmp: Path) -> object:
    """The real server over a real engine; the ASGI lifespan starts and stops the engine."""
    app = stepwell.App("fuzz")

    @app.function(id="f", trigger="fuzz/*")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1h")

    service = Service.for_apps([app], db=f"sqlite:///{tmp / 'fuzz.db'}")
    # schemathesis's in-process client sends `Host: testserver`.
    return create_app(service, manage_engine=True, allowed_hosts=["localhost", "testserver"])


# The schema is loaded at import time (schemathesis parametrizes from it), so the database
# lives in a temporary directory of its own rather than a pytest tmp_path.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", fuzz_app_instance(Path(tempfile.mkdtemp(prefix="stepwell-fuzz-"))))

@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_generated_input(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body.get("status") == response.status_code
    case.validate_response(response, checks=(status_code_conformance, content_type_conformance,
                                              response_schema_conformance))
