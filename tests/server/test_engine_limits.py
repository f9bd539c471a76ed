"""Limits that were missing (issue 10.11): concurrency and flow-control values, cron schedules
faster than a minute, expression length, functions per app; registration validated off the
event loop and not again when an app re-syncs the same registration."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import stepwell
from stepwell.core.config import MAX_CONCURRENCY, ConfigError
from stepwell.core.expressions import MAX_EXPRESSION_LENGTH
from stepwell.core.protocol import MAX_FUNCTIONS_PER_APP, Op, ProtocolError, wait_request
from stepwell.runtime import registration as registration_module
from stepwell.server.app import create_app
from stepwell.service import Service

URL = "http://127.0.0.1:9/api/inngest"     # never called: registration only


def function(fn_id: str, **options: Any) -> dict[str, Any]:
    return {"id": fn_id, "name": fn_id, "triggers": [{"event": "lim/go"}],
            "steps": {"step": {"id": "step", "runtime": {"url": f"{URL}?fnId={fn_id}"}}},
            **options}


def registration(*functions: dict[str, Any]) -> dict[str, Any]:
    return {"appName": "lim", "url": URL, "functions": list(functions)}


@asynccontextmanager
async def http_client(make_engine: Any) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                               stepwell.Engine]]:
    async with make_engine() as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, engine


def test_native_definitions_are_capped() -> None:
    app = stepwell.App("lim")

    def handler(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    with pytest.raises(ConfigError, match=f"option 'concurrency.limit' is {10**12}; "
                                          f"allowed: 1..{MAX_CONCURRENCY}"):
        app.function(id="c", trigger="lim/go", concurrency=10**12)(handler)
    with pytest.raises(ConfigError, match=r"option 'throttle\.burst' is 10000000000; allowed"):
        app.function(id="t", trigger="lim/go",
                     throttle={"limit": 1, "period": "1s", "burst": 10**10})(handler)
    with pytest.raises(ConfigError, match="fires more than once a minute"):
        app.function(id="k", trigger=stepwell.Cron("* * * * * *"))(handler)
    with pytest.raises(ConfigError, match="fires more than once a minute"):
        app.function(id="k2", trigger=stepwell.Cron("*/5 * * * * *"))(handler)
    app.function(id="k3", trigger=stepwell.Cron("30 * * * * *"))(handler)   # once a minute
    long_if = " || ".join(["event.data.x == 1"] * 1000)
    assert len(long_if) > MAX_EXPRESSION_LENGTH
    with pytest.raises(ConfigError, match=f"at most {MAX_EXPRESSION_LENGTH} are allowed"):
        app.function(id="e", trigger=stepwell.Event("lim/go", if_=long_if))(handler)


@pytest.mark.parametrize(("options", "fragment"), [
    ({"concurrency": [{"limit": 10**9}]}, f"allowed: 1..{MAX_CONCURRENCY}"),
    ({"triggers": [{"cron": "* * * * * *"}]}, "fires more than once a minute"),
    ({"triggers": [{"event": "lim/go", "expression": "event.data.a == 1 && " * 20_000 + "true"}]},
     f"at most {MAX_EXPRESSION_LENGTH} are allowed"),
])
async def test_sdk_registrations_beyond_the_limits_are_400(
        make_engine: Any, options: dict[str, Any], fragment: str) -> None:
    async with http_client(make_engine) as (http, _):
        reply = await http.post("/fn/register", json=registration(function("f", **options)))
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]


async def test_too_many_functions_in_one_app_are_400(make_engine: Any) -> None:
    body = registration(*(function(f"f{n}") for n in range(MAX_FUNCTIONS_PER_APP + 1)))
    async with http_client(make_engine) as (http, engine):
        reply = await http.post("/fn/register", json=body)
        assert reply.status_code == 400, reply.text
        assert (f"registers {MAX_FUNCTIONS_PER_APP + 1} functions; at most "
                f"{MAX_FUNCTIONS_PER_APP} are allowed") in reply.json()["error"]
        ok = await http.post("/fn/register", json=registration(
            *(function(f"f{n}") for n in range(MAX_FUNCTIONS_PER_APP))))
        assert ok.status_code == 200, ok.text
        assert len(engine._worker.registry.remote) == MAX_FUNCTIONS_PER_APP


async def test_registration_is_validated_off_the_loop_and_once_per_checksum(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed_on: list[str] = []
    real_parse = registration_module.parse_registration

    def recording(body: Any) -> Any:
        parsed_on.append(threading.current_thread().name)
        return real_parse(body)

    monkeypatch.setattr(registration_module, "parse_registration", recording)
    body = registration(*(function(f"f{n}") for n in range(200)))
    async with http_client(make_engine) as (http, _):
        loop_thread = threading.current_thread().name
        for _ in range(3):                               # the SDK re-syncs: same checksum
            reply = await http.post("/fn/register", json=body)
            assert reply.status_code == 200, reply.text
        changed = registration(*(function(f"f{n}") for n in range(201)))
        assert (await http.post("/fn/register", json=changed)).status_code == 200
    assert len(parsed_on) == 2, parsed_on                # the first sync and the change
    assert loop_thread not in parsed_on


def test_an_sdk_wait_condition_is_checked_when_the_wait_is_registered() -> None:
    """Before, it was compiled at every matching event, inside the event's ingestion: a bad
    (or, now, oversized) condition failed the ingestion of every later event of that name."""
    long_if = "async.data.a == 1 && " * 1000 + "true"
    for condition, fragment in ((long_if, f"at most {MAX_EXPRESSION_LENGTH} are allowed"),
                                ("async.data.a ==", "invalid 'if'")):
        op = Op("h", "WaitForEvent", opts={"event": "lim/paid", "timeout": "1h",
                                           "if": condition})
        with pytest.raises(ProtocolError, match=fragment):
            wait_request(op)
    ok = Op("h", "WaitForEvent", opts={"event": "lim/paid", "timeout": "1h",
                                       "if": "async.data.a == 1"})
    assert wait_request(ok) == ("lim/paid", 3_600_000, None, "async.data.a == 1")
