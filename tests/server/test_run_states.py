"""Every run says what it is doing: the derived `state` in `GET /v1/runs/{id}` and `GET /v1/runs`
(the same in both), the `status` filters over derived states, and the runs list's search
(cursor, event query, time range), on the virtual clock over SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock

T0 = "2026-01-01T00:00:00.000Z"
HOUR_LATER = "2026-01-01T01:00:00.000Z"


def make_app(gate: asyncio.Event) -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="nap", trigger="shop/nap")
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1h")

    @app.function(id="approve", trigger="shop/order")
    async def approve(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_event("approval", event="shop/approved", match="data.order",
                                  if_="async.data.ok == true", timeout="1d")

    @app.function(id="signal", trigger="shop/signal")
    async def signal(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_signal("go", signal="go-signal", timeout="2h")

    @app.function(id="parent", trigger="shop/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.invoke("child", function=nap, data={}, timeout="3h")

    @app.function(id="flaky", trigger="shop/flaky", retries=3)
    async def flaky(ctx: stepwell.Context, step: stepwell.Step) -> None:
        def fail() -> None:
            raise ValueError("database is warming up")
        await step.run("charge", fail)

    @app.function(id="slowly", trigger="shop/slowly",
                  throttle={"limit": 1, "period": "1h", "key": "event.data.user"})
    async def slowly(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="single", trigger="shop/single", concurrency=[{"limit": 1}])
    async def single(ctx: stepwell.Context, step: stepwell.Step) -> None:
        async def hold() -> None:
            await gate.wait()
        await step.run("hold", hold)

    return app


@asynccontextmanager
async def serve(make_engine: Any, gate: asyncio.Event
                ) -> AsyncIterator[tuple[httpx.AsyncClient, stepwell.Engine]]:
    async with make_engine(make_app(gate), check_determinism=False) as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            try:
                yield http, engine
            finally:
                gate.set()


async def state_of(http: httpx.AsyncClient, engine: stepwell.Engine, event_id: str
                   ) -> dict[str, Any]:
    """The run's state from its own page, checked equal to the one the list shows."""
    [run] = await engine.runs(event_id=event_id)
    one = (await http.get(f"/v1/runs/{run.id}")).json()["data"]
    [listed] = (await http.get("/v1/runs", params={"run_id": run.id})).json()["data"]
    assert listed["state"] == one["state"]
    return dict(one["state"])


async def test_each_run_says_what_it_is_doing(make_engine: Any, clock: VirtualClock) -> None:
    gate = asyncio.Event()
    async with serve(make_engine, gate) as (http, engine):
        ids = {name: await engine.send(f"shop/{name}", data) for name, data in [
            ("nap", {}), ("order", {"order": 7}), ("signal", {}), ("parent", {}),
            ("flaky", {}), ("slowly", {"user": "ada"})]}
        # Throttled: the limit and its burst (1 + 1 per hour) take the first two.
        await engine.send("shop/slowly", {"user": "ada"})
        third = await engine.send("shop/slowly", {"user": "ada"})
        await clock.advance("1s")
        assert await state_of(http, engine, str(ids["nap"])) == {
            "kind": "sleeping", "step": "nap", "filter": "sleeping",
            "until": "2026-01-01T01:00:00.000Z",
            "summary": "sleeping until 2026-01-01T01:00:00.000Z (step 'nap')"}
        waiting = await state_of(http, engine, str(ids["order"]))
        assert waiting == {
            "kind": "waiting_for_event", "step": "approval", "filter": "waiting",
            "event": "shop/approved", "match": "data.order", "if": "async.data.ok == true",
            "expires_at": "2026-01-02T00:00:00.000Z", "summary": waiting["summary"]}
        assert "waiting for event shop/approved (match data.order; if async.data.ok == " \
               "true)" in waiting["summary"]
        assert await state_of(http, engine, str(ids["signal"])) == {
            "kind": "waiting_for_signal", "step": "go", "filter": "waiting",
            "signal": "go-signal", "expires_at": "2026-01-01T02:00:00.000Z",
            "summary": "waiting for signal go-signal, expires 2026-01-01T02:00:00.000Z "
                       "(step 'go')"}
        invoking = await state_of(http, engine, str(ids["parent"]))
        [child] = [r for r in await engine.runs(function_id="nap")
                   if r.parent_run_id is not None]
        assert invoking["kind"] == "waiting_for_run" and invoking["filter"] == "invoking"
        assert (invoking["invoked_run_id"], invoking["function"]) == (child.id, "shop/nap")
        assert invoking["invoked_run_status"] == "Running"
        assert invoking["expires_at"] == "2026-01-01T03:00:00.000Z"
        retrying = await state_of(http, engine, str(ids["flaky"]))
        assert retrying["kind"] == "retrying" and retrying["step"] == "charge"
        assert (retrying["attempt"], retrying["max_attempts"]) == (2, 4)
        assert retrying["error"]["message"] == "database is warming up"
        assert retrying["at"] > T0 and "attempt 2 of 4" in retrying["summary"]
        throttled = await state_of(http, engine, str(third))
        assert throttled["kind"] == "throttled" and throttled["key"] == "ada"
        assert throttled["until"] > T0
        assert throttled["summary"] == f"throttled (key 'ada') until {throttled['until']}"
        done = await state_of(http, engine, str(ids["slowly"]))
        assert done == {"kind": "completed", "summary": "completed"}

        # The status filters list exactly the runs in each derived state, one query a page.
        for status, expected in [("sleeping", {ids["nap"], None}), ("waiting",
                                 {ids["order"], ids["signal"]}), ("invoking", {ids["parent"]}),
                                 ("retrying", {ids["flaky"]})]:
            listed = (await http.get("/v1/runs", params={"status": status})).json()["data"]
            found = {r["event_id"] for r in listed}
            if status == "sleeping":        # the invoked child sleeps too (event: invoked)
                assert ids["nap"] in found and child.id in {r["run_id"] for r in listed}
                assert len(listed) == 2
            else:
                assert found == expected, status
            assert all(r["state"]["filter"] == status for r in listed)


async def test_a_run_waiting_for_a_concurrency_slot_says_so(make_engine: Any,
                                                            clock: VirtualClock) -> None:
    gate = asyncio.Event()
    async with serve(make_engine, gate) as (http, engine):
        first = await engine.send("shop/single", {})
        second = await engine.send("shop/single", {})
        [run] = await engine.runs(event_id=str(first))
        deadline = asyncio.get_running_loop().time() + 10
        state: dict[str, Any] = {}
        while state.get("kind") != "concurrency_limited":
            assert asyncio.get_running_loop().time() < deadline, state
            await asyncio.sleep(0.02)
            state = await state_of(http, engine, str(second))
        assert state["keys"][0]["limit"] == 1
        assert state["summary"].startswith("waiting for a concurrency slot")
        assert (await state_of(http, engine, str(first)))["kind"] == "running"
        gate.set()
        await engine.wait(run.id, timeout=10)


async def test_the_runs_list_pages_with_a_cursor_and_searches_events(
        make_engine: Any, clock: VirtualClock) -> None:
    gate = asyncio.Event()
    async with serve(make_engine, gate) as (http, engine):
        sent = []
        for n in range(5):
            sent.append(await engine.send("shop/slowly", {"user": f"u{n}", "n": n,
                                                          "plan": "pro" if n % 2 else "free"}))
            await clock.advance("1s")
        pages: list[list[str]] = []
        cursor = None
        while True:
            reply = (await http.get("/v1/runs", params={
                "function_id": "slowly", "limit": 2, **({"cursor": cursor} if cursor else {})}
                                    )).json()
            pages.append([r["event_id"] for r in reply["data"]])
            cursor = reply["metadata"]["next_cursor"]
            if cursor is None:
                break
            await engine.send("shop/slowly", {"user": "late"})    # inserts do not shift pages
        assert pages == [[sent[4], sent[3]], [sent[2], sent[1]], [sent[0]]]

        pro = (await http.get("/v1/runs", params={"query": 'event.data.plan == "pro"'})
               ).json()
        assert [r["event_id"] for r in pro["data"]] == [sent[3], sent[1]]
        assert pro["metadata"]["next_cursor"] is None
        one = (await http.get("/v1/runs", params={"query": "event.data.n == 2"})).json()["data"]
        assert [r["event_id"] for r in one] == [sent[2]]
        bare = (await http.get("/v1/runs", params={"query": 'data.n == 2 && name != "data"'})
                ).json()["data"]    # the documented short form: the event is implied
        assert [r["event_id"] for r in bare] == [sent[2]]
        by_event = (await http.get("/v1/runs", params={"event_id": sent[0]})).json()["data"]
        assert [r["event_id"] for r in by_event] == [sent[0]]
        window = (await http.get("/v1/runs", params={
            "function_id": "slowly", "since": "2026-01-01T00:00:01Z",
            "until": "2026-01-01T00:00:03Z"})).json()["data"]
        assert [r["event_id"] for r in window] == [sent[2], sent[1]]

        for params, words in [({"query": "event.data.n =="}, "invalid 'query'"),
                              ({"cursor": "!!"}, "'cursor'"),
                              ({"status": "snoozing"}, "unknown run status 'snoozing'"),
                              ({"status": "sleeping,failed"}, "cannot be combined"),
                              ({"since": "yesterday"}, "'since' must be an RFC 3339"),
                              ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
                               "'since' must not be after 'until'")]:
            bad = await http.get("/v1/runs", params=params)
            assert bad.status_code == 400 and words in bad.json()["error"], (params, bad.text)


async def test_a_query_scans_a_bounded_number_of_runs_per_page(
        make_engine: Any, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query matching nothing in the first QUERY_SCAN runs answers a short page and a cursor
    to go on from, never an unbounded scan."""
    from stepwell import service_runs
    monkeypatch.setattr(service_runs, "QUERY_SCAN", 4)
    gate = asyncio.Event()
    async with serve(make_engine, gate) as (http, engine):
        target = await engine.send("shop/slowly", {"user": "x", "n": 99})
        for n in range(8):
            await clock.advance("1s")
            await engine.send("shop/slowly", {"user": f"u{n}", "n": n})
        found: list[str] = []
        cursor, requests = None, 0
        while True:
            requests += 1
            reply = (await http.get("/v1/runs", params={
                "query": "event.data.n == 99", "limit": 2,
                **({"cursor": cursor} if cursor else {})})).json()
            found += [r["event_id"] for r in reply["data"]]
            cursor = reply["metadata"]["next_cursor"]
            if cursor is None:
                break
        assert found == [target] and requests >= 2


async def test_a_function_is_invoked_with_a_payload(make_engine: Any, clock: VirtualClock
                                                    ) -> None:
    gate = asyncio.Event()
    async with serve(make_engine, gate) as (http, engine):
        started = await http.post("/v1/functions/shop/slowly/invoke",
                                  json={"data": {"user": "ada"}})
        assert started.status_code == 200, started.text
        run = await engine.wait(started.json()["data"]["run_id"], timeout=10)
        assert run.status == "completed"
        [event] = (await http.get(f"/v1/runs/{run.id}/events")).json()["data"]
        assert (event["name"], event["data"]) == ("inngest/function.invoked", {"user": "ada"})
        # The throttle's key is missing from the data: the run ends at once, saying why.
        keyless = await http.post("/v1/functions/shop/slowly/invoke", json={})
        failed = await engine.wait(keyless.json()["data"]["run_id"], timeout=10)
        assert failed.status in ("failed", "skipped") and failed.error is not None
        for path, body, status, words in [
                ("/v1/functions/shop/nope/invoke", {}, 404, "no function 'shop/nope'"),
                ("/v1/functions/shop/slowly/invoke", {"data": [1]}, 400, "JSON object"),
                ("/v1/functions/shop/slowly/invoke", {"payload": {}}, 400, '{"data"')]:
            bad = await http.post(path, json=body)
            assert bad.status_code == status and words in bad.json()["error"], bad.text
