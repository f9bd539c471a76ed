"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

Every generated request must get a well-formed answer: no 5xx, and JSON errors that carry
`error` and `status`. Requests run in-process against a real engine on a real SQLite file.
The document must describe every route the app serves (so the fuzzing reaches all of them),
and each operation also gets the hostile values that once made 500s (issue 10) as explicit
examples: poison JSON, deep nesting, huge and non-finite numbers, NUL in ids and names.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hostile import HOSTILE_BODIES, HOSTILE_STRINGS
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.routing import Route

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service


def fuzz_app_instance(tmp: Path) -> Starlette:
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
APP = fuzz_app_instance(Path(tempfile.mkdtemp(prefix="stepwell-fuzz-")))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

def assert_well_formed(case: schemathesis.Case, response: Any) -> None:
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
    if response.status_code >= 400 and case.path != "/":
        body = response.json()
        assert isinstance(body.get("error"), str) and body.get("status") == response.status_code


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_generated_input(case: schemathesis.Case) -> None:
    response = case.call()
    assert_well_formed(case, response)
    case.validate_response(response, checks=(status_code_conformance, content_type_conformance,
                                              response_schema_conformance))


def test_the_document_describes_every_route() -> None:
    """Each (method, path) the app serves is in /openapi.json, so the fuzzing covers it."""
    documented = {(method.upper(), path) for path, operations in
                  schema.raw_schema["paths"].items() for method in operations}
    served = set()
    for route in APP.routes:
        assert isinstance(route, Route), route
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        served |= {(method, path) for method in (route.methods or ()) if method != "HEAD"}
    assert served - documented == set(), "routes missing from openapi.py"
    assert documented - served == set(), "openapi.py documents routes the app does not serve"


def _operations() -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", _operations(), ids=lambda op: op.label)
def test_hostile_examples_never_fail(operation: Any) -> None:
    """Every operation, with each hostile body (where it takes one) and each hostile string
    in each of its path and query parameters: an answer below 500 with a JSON error."""
    path_names = [p.name for p in operation.path_parameters]
    query_names = [p.name for p in operation.query]
    cases = []
    for value in HOSTILE_STRINGS:
        cases.append(operation.Case(path_parameters={n: value for n in path_names},
                                    query={n: value for n in query_names}))
    if operation.body:
        params = {n: "x" for n in path_names}
        cases += [operation.Case(path_parameters=params, body=body,
                                 media_type="application/json") for body in HOSTILE_BODIES]
    for case in cases:
        assert_well_formed(case, case.call())
