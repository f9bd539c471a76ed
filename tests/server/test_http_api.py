"""The HTTP API over a real engine (SQLite file, virtual clock), driven in-process via ASGI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import stepwell
from stepwell.server.app import MAX_BODY_BYTES, MAX_EVENT_REQUEST_BYTES, create_app
from stepwell.service import Service
from stepwell.service_views import iso
from stepwell.testing import VirtualClock

Client = Callable[..., Any]


def make_app() -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="greet", trigger="shop/greet")
    async def greet(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, str]:
        name = await step.run("name", lambda: ctx.event.data.get("name", "world"))
        return {"greeting": f"hello {name}"}

    @app.function(id="slow", trigger="shop/slow")
    async def slow(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("first", lambda: 1)
        await step.sleep("nap", "1h")
        return "woke"

    @app.function(id="broken", trigger="shop/broken", retries=0)
    async def broken(ctx: stepwell.Context, step: stepwell.Step) -> None:
        raise stepwell.NonRetriableError("out of stock")

    return app


@pytest.fixture
def client(make_engine: Any) -> Client:
    """`async with client() as (http, engine):` an httpx client on the ASGI app."""

    @asynccontextmanager
    async def factory(**app_options: Any
                      ) -> AsyncIterator[tuple[httpx.AsyncClient, stepwell.Engine]]:
        async with make_engine(make_app()) as engine:
            asgi = create_app(Service(engine), **app_options)
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                         headers={"content-type": "application/json"}) as http:
                yield http, engine

    return factory


async def send_one(http: httpx.AsyncClient, name: str, data: dict[str, Any]) -> str:
    reply = await http.post("/e/dev", json={"name": name, "data": data})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == 200 and len(body["ids"]) == 1
    return str(body["ids"][0])


async def only_run(http: httpx.AsyncClient, event_id: str) -> dict[str, Any]:
    reply = await http.get(f"/v1/events/{event_id}/runs")
    assert reply.status_code == 200, reply.text
    [run] = reply.json()["data"]
    return dict(run)


def assert_error(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == status
    for word in words:
        assert word in body["error"], body


async def test_event_triggers_run_visible_through_run_endpoints(client: Client) -> None:
    async with client() as (http, engine):
        event_id = await send_one(http, "shop/greet", {"name": "ada"})
        run = await only_run(http, event_id)
        await engine.wait(run["run_id"], timeout=10)

        reply = await http.get(f"/v1/runs/{run['run_id']}")
        assert reply.status_code == 200
        body = reply.json()
        assert set(body["metadata"]) == {"fetched_at", "cached_until"}
        got = body["data"]
        assert got["run_id"] == run["run_id"]
        assert got["status"] == "Completed"
        assert got["output"] == {"greeting": "hello ada"}
        assert got["event_id"] == event_id
        assert got["function_id"] == "shop/greet" and got["app_id"] == "shop"
        assert got["run_started_at"] == iso(1_767_225_600_000) == "2026-01-01T00:00:00.000Z"
        assert got["ended_at"] is not None and got["error"] is None
        [step] = got["steps"]
        assert (step["id"], step["status"], step["output"]) == ("name", "completed", "ada")

        [listed] = (await http.get("/v1/events/" + event_id + "/runs")).json()["data"]
        assert listed["status"] == "Completed" and "steps" not in listed

        by_fn = (await http.get("/v1/runs", params={"function_id": "greet"})).json()["data"]
        assert [r["run_id"] for r in by_fn] == [run["run_id"]]
        by_status = (await http.get("/v1/runs", params={"status": "Completed"})).json()["data"]
        assert [r["run_id"] for r in by_status] == [run["run_id"]]
        assert (await http.get("/v1/runs", params={"status": "running"})).json()["data"] == []
        by_event = (await http.get("/v1/runs", params={"event_id": event_id})).json()["data"]
        assert len(by_event) == 1

        events = (await http.get("/v1/events", params={"name": "shop/greet"})).json()["data"]
        assert [(e["id"], e["name"], e["data"]) for e in events] == [
            (event_id, "shop/greet", {"name": "ada"})]
        assert events[0]["receivedAt"] == "2026-01-01T00:00:00.000Z"
        assert (await http.get("/v1/events", params={"name": "other"})).json()["data"] == []
        one = (await http.get(f"/v1/events/{event_id}")).json()["data"]
        assert one["name"] == "shop/greet"


async def test_batch_send_and_event_id_dedupe(client: Client) -> None:
    async with client() as (http, engine):
        reply = await http.post("/e/any-key", json=[
            {"name": "shop/greet", "data": {"name": "a"}, "id": "order-1"},
            {"name": "shop/greet", "data": {"name": "b"}}])
        assert reply.status_code == 200
        ids = reply.json()["ids"]
        assert len(ids) == 2 and ids[0] == "order-1"
        again = await http.post("/e/any-key", json={"name": "shop/greet", "id": "order-1"})
        assert again.json()["ids"] == ["order-1"]
        await engine.idle()
        runs = (await http.get("/v1/runs")).json()["data"]
        assert len(runs) == 2  # the repeated id started nothing


async def test_failed_run_reports_error_as_output(client: Client) -> None:
    async with client() as (http, engine):
        run = await only_run(http, await send_one(http, "shop/broken", {}))
        await engine.wait(run["run_id"], timeout=10)
        got = (await http.get(f"/v1/runs/{run['run_id']}")).json()["data"]
        assert got["status"] == "Failed"
        assert got["error"]["message"] == "out of stock"
        assert got["output"] == got["error"]


async def test_functions_and_health(client: Client) -> None:
    async with client() as (http, _):
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == 200
        fns = (await http.get("/v1/functions")).json()["data"]
        assert [f["id"] for f in fns] == ["shop/broken", "shop/greet", "shop/slow"]
        assert fns[1]["triggers"] == [{"event": "shop/greet"}]
        assert fns[1]["app_id"] == "shop" and fns[1]["function_id"] == "greet"
        spec = (await http.get("/openapi.json")).json()
        assert "/v1/runs/{run_id}" in spec["paths"]


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", ("not valid JSON",)),
    (b"", ("empty",)),
    (b'"just a string"', ("an event must be an object",)),
    (b'{"data": {}}', ("name",)),
    (b'{"name": "", "data": {}}', ("name",)),
    (b'{"name": "shop/greet", "data": [1, 2]}', ("data", "object")),
    (b'{"name": "shop/greet", "data": "x"}', ("data", "object")),
    (b'{"name": "shop/greet", "data": {"x": NaN}}', ("NaN",)),
    (b'[{"data": {}}, {"name": "shop/greet"}]', ("event [0]", "name", "nothing was stored")),
    (b'[7, {"name": "shop/greet"}]', ("event [0]", "object")),
    (b'{"name": "shop/greet", "ts": 9223372036854775808}', ("ts", "year 9999")),
    (b'{"name": "shop/greet", "ts": -1}', ("ts", "epoch milliseconds")),
    (b'\xff\xfe', ("UTF-8",)),
])
async def test_bad_events_are_rejected_and_store_nothing(client: Client, body: bytes,
                                                        words: tuple[str, ...]) -> None:
    async with client() as (http, engine):
        kept = await send_one(http, "shop/greet", {"name": "kept"})
        reply = await http.post("/e/dev", content=body,
                                headers={"content-type": "application/json"})
        assert_error(reply, 400, *words)
        await engine.idle()
        events = (await http.get("/v1/events")).json()["data"]
        assert [e["id"] for e in events] == [kept]
        assert len((await http.get("/v1/runs")).json()["data"]) == 1


async def test_oversize_body_is_refused(client: Client) -> None:
    big = json.dumps({"name": "shop/greet", "data": {"blob": "x" * MAX_BODY_BYTES}})
    async with client() as (http, _):
        assert_error(await http.post("/e/dev", content=big), 413, "3 MiB")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(MAX_EVENT_REQUEST_BYTES // (1024 * 1024) + 1):
                yield b" " * (1024 * 1024)

        assert_error(await http.post("/e/dev", content=chunks()), 413, "32 MiB")
        assert (await http.get("/v1/events")).json()["data"] == []


async def test_body_just_under_the_limit_is_accepted(client: Client) -> None:
    async with client() as (http, _):
        overhead = len(json.dumps({"name": "shop/other", "data": {"blob": ""}}))
        blob = "x" * (MAX_BODY_BYTES - overhead)
        body = json.dumps({"name": "shop/other", "data": {"blob": blob}}).encode()
        assert len(body) == MAX_BODY_BYTES
        reply = await http.post("/e/dev", content=body)
        assert reply.status_code == 200, reply.text


async def test_unknown_ids_routes_and_bad_queries(client: Client) -> None:
    async with client() as (http, _):
        assert_error(await http.get("/v1/runs/nope"), 404, "no run", "nope")
        assert_error(await http.get("/v1/events/nope/runs"), 404, "no event", "nope")
        assert_error(await http.get("/v1/events/nope"), 404, "no event")
        assert_error(await http.post("/v1/runs/nope/cancel"), 404, "no run")
        assert_error(await http.delete("/v1/runs/nope"), 404, "no run")
        assert_error(await http.get("/v1/runs", params={"status": "sleepy"}), 400,
                     "unknown run status", "sleepy")
        assert_error(await http.get("/v1/runs", params={"limit": "0"}), 400, "limit")
        assert_error(await http.get("/v1/events", params={"limit": "lots"}), 400, "limit")
        assert_error(await http.get("/v2/whatever"), 404, "no route")
        assert_error(await http.get("/e/dev"), 405, "GET")


async def test_event_keys_are_checked_outside_dev_mode(client: Client) -> None:
    async with client(event_keys={"secret-0123456789abcdef"}) as (http, _):
        assert_error(await http.post("/e/wrong", json={"name": "shop/greet"}), 401, "event key")
        reply = await http.post("/e/secret-0123456789abcdef", json={"name": "shop/greet"})
        assert reply.status_code == 200


async def test_cancel_a_sleeping_run(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, engine):
        run = await only_run(http, await send_one(http, "shop/slow", {}))
        await engine.idle()
        assert (await http.get(f"/v1/runs/{run['run_id']}")).json()["data"]["status"] == "Running"

        reply = await http.post(f"/v1/runs/{run['run_id']}/cancel")
        assert reply.status_code == 200, reply.text
        assert reply.json()["data"]["status"] == "Cancelled"
        again = await http.delete(f"/v1/runs/{run['run_id']}")  # Inngest's route; idempotent
        assert again.status_code == 200 and again.json()["data"]["status"] == "Cancelled"

        await clock.advance("2h")  # the sleep ending must not revive it
        got = (await http.get(f"/v1/runs/{run['run_id']}")).json()["data"]
        assert got["status"] == "Cancelled" and got["output"] is None


async def test_cancelling_a_finished_run_is_a_conflict(client: Client) -> None:
    async with client() as (http, engine):
        run = await only_run(http, await send_one(http, "shop/greet", {}))
        await engine.wait(run["run_id"], timeout=10)
        assert_error(await http.post(f"/v1/runs/{run['run_id']}/cancel"), 409, "completed")


async def test_bulk_cancellation(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, engine):
        first = await only_run(http, await send_one(http, "shop/slow", {"user": "a"}))
        second = await only_run(http, await send_one(http, "shop/slow", {"user": "b"}))
        await engine.idle()
        body = {"app_id": "shop", "function_id": "slow",
                "started_before": iso(clock.now() + 1000), "if": "event.data.user == 'b'"}
        reply = await http.post("/v1/cancellations", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["data"]["run_ids"] == [second["run_id"]]
        statuses = {r["run_id"]: r["status"]
                    for r in (await http.get("/v1/runs")).json()["data"]}
        assert statuses == {first["run_id"]: "Running", second["run_id"]: "Cancelled"}

        bad = {**body, "if": "event.data.user =="}
        assert_error(await http.post("/v1/cancellations", json=bad), 400, "if")
        assert_error(await http.post("/v1/cancellations", json={**body, "function_id": "x"}),
                     404, "shop/x")
        missing = {k: v for k, v in body.items() if k != "started_before"}
        assert_error(await http.post("/v1/cancellations", json=missing), 400, "started_before")
        assert_error(await http.post("/v1/cancellations",
                                     json={**body, "started_before": "yesterday"}),
                     400, "RFC 3339")


async def test_replay_a_run_over_http(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, engine):
        run = await only_run(http, await send_one(http, "shop/slow", {"user": "a"}))
        await clock.advance("1h")
        await engine.wait(run["run_id"], timeout=10)
        reply = await http.post(f"/v1/runs/{run['run_id']}/replay")
        assert reply.status_code == 200, reply.text
        fresh = reply.json()["data"]
        assert fresh["run_id"] != run["run_id"] and fresh["event_id"] == run["event_id"]
        assert fresh["replay_of"] == run["run_id"]
        reply = await http.post(f"/v1/runs/{run['run_id']}/replay", json={"from_step": "nap"})
        assert reply.status_code == 200, reply.text
        from_nap = reply.json()["data"]
        await clock.advance("1h")                 # "first" is reused; "nap" sleeps again
        done = await engine.wait(from_nap["run_id"], timeout=10)
        assert done.output == "woke" and [s.id for s in done.steps] == ["first", "nap"]
        assert_error(await http.post(f"/v1/runs/{run['run_id']}/replay",
                                     json={"from_step": "nope"}), 400, "no step 'nope'",
                     "first, nap")
        assert_error(await http.post(f"/v1/runs/{run['run_id']}/replay",
                                     json={"from": "nap"}), 400, "from_step")
        assert_error(await http.post("/v1/runs/missing/replay"), 404, "no run")


async def test_metrics_count_what_happened(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, engine):
        await send_one(http, "shop/greet", {"name": "a"})
        await send_one(http, "shop/broken", {})
        await send_one(http, "shop/slow", {})
        await engine.idle()
        reply = await http.get("/metrics")
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/plain")
        text = reply.text
        # 3 sent + inngest/function.failed, stored by the engine when "broken" failed
        assert "stepwell_events_received_total 4.0" in text
        assert "stepwell_runs_created_total 3.0" in text
        assert 'stepwell_runs_finished_total{status="completed"} 1.0' in text
        assert 'stepwell_runs_finished_total{status="failed"} 1.0' in text
        assert 'stepwell_steps_committed_total{kind="sleep"} 1.0' in text
        assert "stepwell_queue_ready 0.0" in text
        assert 'stepwell_step_seconds_bucket{le="+Inf"} 2.0' in text      # greet + slow
        await clock.advance("1h")
        text = (await http.get("/metrics")).text
        assert 'stepwell_runs_finished_total{status="completed"} 2.0' in text
        # The sleeper was claimed when due: one observation, on time on the virtual clock.
        assert 'stepwell_queue_wait_seconds_bucket{le="0.001"} 1.0' in text
        assert "stepwell_queue_wait_seconds_count 1.0" in text


async def test_metrics_need_the_signing_key_in_production(client: Client) -> None:
    key = "0123456789abcdef" * 4
    async with client(signing_keys=[f"signkey-prod-{key}"]) as (http, _engine):
        assert (await http.get("/metrics")).status_code == 401
        reply = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200 and "stepwell_queue_ready" in reply.text
