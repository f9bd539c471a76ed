"""Hostile and careless input over HTTP (issues 10.2, 10.8, 10.11 and 11.3, 11.8, 11.9), on
SQLite and Postgres: a real engine behind the real ASGI app, driven in-process.

Poison JSON (non-finite numbers, lone surrogates, NUL) is refused with a 400 naming the field
on every route that takes JSON, and nothing is stored; deep nesting, out-of-range times and
broken URLs are 400s; a row that an older version stored with such values never fails a
listing; the event API limits each event, not the request, keeps the events before an invalid
one (as Inngest does) and derives event ids from the SDKs' seed header.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from typing import Any

import httpx
import psycopg
import pytest
from hostile import JSON_ROUTES, POISON, nested, with_poison
from ulid import ULID

import stepwell
from stepwell.core.jsonsafe import MAX_JSON_DEPTH
from stepwell.core.models import MAX_EVENT_BYTES, MAX_EVENT_ID_LENGTH, MAX_EVENT_NAME_LENGTH
from stepwell.server.app import MAX_EVENT_REQUEST_BYTES, create_app
from stepwell.service import Service

Client = Callable[..., Any]
SEED_HEADER = "x-inngest-event-id-seed"


def make_app() -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="greet", trigger="shop/greet")
    async def greet(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return await step.run("hello", lambda: f"hello {ctx.event.data.get('n')}")

    @app.function(id="wait", trigger="shop/wait")
    async def wait(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return await step.wait_for_signal("sig", signal="go", timeout="1h")

    return app


@pytest.fixture
def client(make_engine: Any) -> Client:
    @asynccontextmanager
    async def factory() -> AsyncIterator[tuple[httpx.AsyncClient, stepwell.Engine]]:
        async with make_engine(make_app()) as engine:
            transport = httpx.ASGITransport(app=create_app(Service(engine)))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost",
                                         headers={"content-type": "application/json"}) as http:
                yield http, engine

    return factory


def assert_400(reply: httpx.Response, *words: str) -> dict[str, Any]:
    assert reply.status_code == 400, reply.text
    body: dict[str, Any] = reply.json()
    assert body["status"] == 400
    for word in words:
        assert word in body["error"], body
    return body


async def stored_events(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    reply = await http.get("/v1/events", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


async def all_runs(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    reply = await http.get("/v1/runs")
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


# --- 10.2: poison JSON, refused at the one door on every JSON route ----------------------------

@pytest.mark.parametrize("poison", list(POISON))
async def test_poison_json_is_refused_on_every_json_route(client: Client, poison: str) -> None:
    async with client() as (http, engine):
        run_id = (await engine.runs())[0].id if await engine.runs() else "none"
        for route, template in JSON_ROUTES.items():
            method, path = route.split(" ")
            reply = await http.request(method, path.replace("RUN", run_id),
                                       content=with_poison(template, poison),
                                       headers={"content-type": "application/json"})
            assert_400(reply, "'data.items[3].name'", POISON[poison])
        assert await stored_events(http) == []
        assert await all_runs(http) == []


@pytest.mark.parametrize("key", ['"\\u0000"', '"k\\ud800"'])
async def test_poison_in_a_key_is_refused_naming_the_key(client: Client, key: str) -> None:
    async with client() as (http, _):
        body = f'{{"name": "shop/greet", "data": {{"ok": {{{key}: 1}}}}}}'.encode()
        reply = await http.post("/e/dev", content=body)
        assert_400(reply, "data.ok[", "key")
        assert await stored_events(http) == []


async def test_nul_and_surrogates_in_names_and_ids_are_refused(client: Client) -> None:
    async with client() as (http, _):
        for field in ('"name": "shop/gr\\u0000eet"', '"name": "shop/\\udc00"',
                      '"name": "shop/greet", "id": "a\\u0000b"',
                      '"name": "shop/greet", "id": "\\ud800"'):
            reply = await http.post("/e/dev", content=f"{{{field}}}".encode())
            assert_400(reply, "'name'" if "id" not in field else "'id'")
        for url in ("/v1/runs/a%00b", "/v1/events/%00", "/v1/events/x%00/runs",
                    "/v0/runs/%00/batch", "/v0/runs/%00/actions", "/v1/runs/%00/events",
                    "/v1/events?name=a%00", "/v1/runs?function_id=%00",
                    "/v1/runs?event_id=x%00y"):
            assert_400(await http.get(url), "NUL")
        for url in ("/v1/runs/%ed%a0%80", "/v1/events/%ff%fe", "/v1/events?name=%ed%b0%80",
                    "/v0/runs/%c3%28/batch"):        # bytes that are not UTF-8 text
            reply = await http.get(url)
            assert reply.status_code in (200, 400, 404), (url, reply.text)
        assert_400(await http.post("/v1/runs/%00/cancel"), "NUL")
        assert_400(await http.delete("/v1/runs/%00"), "NUL")
        assert await stored_events(http) == []


async def test_a_batch_with_poison_keeps_the_events_before_it(client: Client) -> None:
    async with client() as (http, engine):
        body = b'[{"name": "shop/greet", "data": {"n": 1}}, {"name": "shop/greet", ' \
               b'"data": {"deep": {"x": 1e400}}}, {"name": "shop/greet"}]'
        reply = await http.post("/e/dev", content=body)
        answer = assert_400(reply, "'[1].data.deep.x'", "finite")
        [kept] = answer["ids"]
        assert [e["id"] for e in await stored_events(http)] == [kept]
        # The REST API's own send stays all-or-nothing.
        assert_400(await http.post("/v1/events", content=body), "[1].data.deep.x",
                   "nothing was stored")
        await engine.idle()
        assert len(await stored_events(http)) == 1


async def test_the_native_send_refuses_poison_naming_the_field(make_engine: Any) -> None:
    async with make_engine(make_app()) as engine:
        for data, words in (({"items": [0, {"v": float("inf")}]}, "data.items[1].v"),
                            ({"s": "\ud800"}, "data.s"), ({"s": "a\x00"}, "data.s"),
                            ({"t": {1, 2}}, "data.t"),
                            ({"bad key": {(1, 2): 3}}, 'data["bad key"]')):
            with pytest.raises(stepwell.InvalidEventError) as caught:
                await engine.send("shop/greet", data)
            assert words in str(caught.value)
        with pytest.raises(stepwell.InvalidEventError):      # all or nothing
            await engine.send([{"name": "shop/greet"}, {"name": "shop/greet",
                                                        "data": {"x": float("nan")}}])
        assert await engine.events() == []


# --- 10.8: malformed input is a 400, never a 500 -------------------------------------------------


@pytest.mark.parametrize("route", list(JSON_ROUTES))
async def test_deep_nesting_is_a_400_with_the_documented_limit(client: Client,
                                                               route: str) -> None:
    method, path = route.split(" ")
    async with client() as (http, _):
        for depth in (1000, 100_000):
            body = JSON_ROUTES[route].encode().replace(b"DATA", nested(depth))
            reply = await http.request(method, path.replace("RUN", "none"), content=body)
            assert_400(reply, f"deeper than {MAX_JSON_DEPTH} levels")
        assert await stored_events(http) == []


async def test_nesting_up_to_the_limit_is_accepted(client: Client) -> None:
    async with client() as (http, _):
        # The event object is level 1 and data level 2: data holds MAX - 2 levels of arrays.
        ok = {"name": "shop/greet", "data": {"x": json.loads(nested(MAX_JSON_DEPTH - 2))}}
        assert (await http.post("/e/dev", json=ok)).status_code == 200
        over = {"name": "shop/greet", "data": {"x": json.loads(nested(MAX_JSON_DEPTH - 1))}}
        assert_400(await http.post("/e/dev", json=over), "'data.x", "deeper than")
        assert len(await stored_events(http)) == 1


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1e23", "100000000000000000000000",
                                   "-5", '"10^23"', '"+275760-09-13T00:00:00Z"', "true"])
async def test_cancellation_times_out_of_range_are_400(client: Client, value: str) -> None:
    async with client() as (http, _):
        body = ('{"app_id": "shop", "function_id": "greet", "started_before": '
                f'{value}}}').encode()
        assert_400(await http.post("/v1/cancellations", content=body), "started_before")
        body = ('{"app_id": "shop", "function_id": "greet", "started_before": 1000, '
                f'"started_after": {value}}}').encode()
        assert_400(await http.post("/v1/cancellations", content=body), "started_after")


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]/", "http://", "http://\u0001x/",
                                 "https://:80/"])
async def test_sync_with_a_broken_url_is_400(client: Client, url: str) -> None:
    async with client() as (http, _):
        assert_400(await http.post("/v1/apps/sync", json={"url": url}), "url")


# --- 10.11: id and name lengths ------------------------------------------------------------------


async def test_event_id_and_name_lengths_are_capped(client: Client) -> None:
    async with client() as (http, _):
        ok = {"name": "n" * MAX_EVENT_NAME_LENGTH, "id": "i" * MAX_EVENT_ID_LENGTH}
        assert (await http.post("/e/dev", json=ok)).status_code == 200
        assert_400(await http.post("/e/dev", json={"name": "shop/greet",
                                                   "id": "i" * (MAX_EVENT_ID_LENGTH + 1)}),
                   "'id'", str(MAX_EVENT_ID_LENGTH))
        assert_400(await http.post("/e/dev", json={"name": "n" * (MAX_EVENT_NAME_LENGTH + 1)}),
                   "name", str(MAX_EVENT_NAME_LENGTH))
        assert len(await stored_events(http)) == 1


# --- 10.2: a stored row that cannot be shown never fails a listing ------------------------------

# Rows as an older version could have written them (its json.dumps allowed NaN and kept lone
# surrogates as \ud800 escapes): a non-finite number, a lone surrogate, a bad key.
BAD_DATA = '{"x": Infinity, "y": NaN, "s": "\\ud800", "\\udc00k": 1}'
BAD_OUTPUT = '{"big": -Infinity, "text": "a\\udfffb"}'


def insert_bad_rows(db_url: str, now: int) -> None:
    if db_url.startswith("sqlite:///"):
        with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute("INSERT INTO events (id, name, data, user, ts, received_at, processed) "
                         "VALUES ('bad-event', 'shop/old', ?, NULL, ?, ?, 1)",
                         (BAD_DATA, now, now + 1))
            conn.execute("INSERT INTO runs (id, function_id, status, event_id, created_at, "
                         "ended_at, output) VALUES ('bad-run', 'shop/greet', 'completed', "
                         "'bad-event', ?, ?, ?)", (now + 1, now + 2, BAD_OUTPUT))
        return
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO events (id, name, data, user_data, ts, received_at, "
                     "processed) VALUES ('bad-event', 'shop/old', %s, NULL, %s, %s, true)",
                     (BAD_DATA, now, now + 1))
        conn.execute("INSERT INTO runs (id, function_id, status, event_id, created_at, "
                     "ended_at, output) VALUES ('bad-run', 'shop/greet', 'completed', "
                     "'bad-event', %s, %s, %s)", (now + 1, now + 2, BAD_OUTPUT))


async def test_a_bad_stored_row_is_shown_degraded_and_the_listings_answer(
        client: Client, db_url: str) -> None:
    async with client() as (http, engine):
        good = (await http.post("/e/dev", json={"name": "shop/greet", "data": {"n": 1}}))
        good_id = good.json()["ids"][0]
        await engine.idle()
        insert_bad_rows(db_url, engine._worker.clock.now())

        events = await stored_events(http)
        assert [e["id"] for e in events] == ["bad-event", good_id]
        bad = events[0]
        assert bad["data"]["x"] is None and bad["data"]["y"] is None
        assert bad["data"]["s"] == "\ufffd" and "\ufffdk" in bad["data"]
        assert any("data.x" in p for p in bad["degraded"]) and "degraded" not in events[1]

        one = await http.get("/v1/events/bad-event")
        assert one.status_code == 200 and one.json()["data"]["degraded"]
        runs = await all_runs(http)
        assert {r["run_id"] for r in runs} >= {"bad-run"} and len(runs) == 2
        [bad_run] = [r for r in runs if r["run_id"] == "bad-run"]
        assert bad_run["output"] == {"big": None, "text": "a\ufffdb"}
        assert bad_run["degraded"]
        for url in ("/v1/runs/bad-run", "/v1/events/bad-event/runs", "/v1/runs?outputs=false",
                    "/v1/runs/bad-run/events", "/v0/runs/bad-run/batch"):
            reply = await http.get(url)
            assert reply.status_code in (200, 404), (url, reply.text)
            assert reply.status_code == 200 or "bad-run" in reply.text, url
        # The dashboard's page still loads its data: the listings above are what it reads.


# --- 11.8: limits per event, not per request -----------------------------------------------------


async def test_eight_one_mib_events_go_in_one_send(client: Client) -> None:
    async with client() as (http, _):
        blob = "x" * (1024 * 1024)
        batch = [{"name": "shop/other", "data": {"i": i, "blob": blob}} for i in range(8)]
        reply = await http.post("/e/dev", json=batch)
        assert reply.status_code == 200, reply.text[:300]
        assert len(reply.json()["ids"]) == 8
        assert len(await stored_events(http)) == 8


async def test_each_event_is_capped_and_the_request_too(client: Client) -> None:
    async with client() as (http, _):
        overhead = len(json.dumps({"name": "shop/other", "data": {"b": ""}}))
        exact = {"name": "shop/other", "data": {"b": "x" * (MAX_EVENT_BYTES - overhead)}}
        assert len(json.dumps(exact)) == MAX_EVENT_BYTES
        assert (await http.post("/e/dev", content=json.dumps(exact))).status_code == 200
        over = {"name": "shop/other", "data": {"b": "x" * (MAX_EVENT_BYTES - overhead + 1)}}
        reply = await http.post("/e/dev", content=json.dumps(over))
        assert reply.status_code == 413 and "per event" in reply.json()["error"]
        # In a batch, the events before the oversize one are kept (Inngest's partial batch).
        reply = await http.post("/e/dev", content=json.dumps([{"name": "shop/other"}, over]))
        answer = assert_400(reply, "[1]", str(MAX_EVENT_BYTES))
        assert len(answer["ids"]) == 1
        too_many = b"[" + b",".join([b'{"name":"shop/other"}'] * 5001) + b"]"
        assert len((assert_400(await http.post("/e/dev", content=too_many), "5000"))["ids"]) \
            == 5000
        huge = b" " * (MAX_EVENT_REQUEST_BYTES + 1)
        reply = await http.post("/e/dev", content=huge)
        assert reply.status_code == 413 and "32 MiB" in reply.json()["error"]


# --- 11.9: a batch with an invalid event ---------------------------------------------------------


async def test_a_batch_stores_the_events_before_the_first_invalid_one(client: Client) -> None:
    async with client() as (http, engine):
        batch = [{"name": "shop/greet", "data": {"n": 1}}, {"name": "shop/greet",
                                                            "data": {"n": 2}},
                 {"name": "", "data": {}}, {"name": "shop/greet", "data": {"n": 4}}]
        reply = await http.post("/e/dev", json=batch)
        answer = assert_400(reply, "event [2]", "name", "2 events before it were stored")
        assert set(answer) == {"ids", "status", "error"} and len(answer["ids"]) == 2
        await engine.idle()
        assert {e["id"] for e in await stored_events(http)} == set(answer["ids"])
        runs = await all_runs(http)
        assert sorted(r["output"] for r in runs) == ["hello 1", "hello 2"]
        # JSON that breaks off after the second event: the two before are kept, as Inngest
        # (which parses the body as a stream) does.
        broken = b'[{"name": "shop/other"}, {"name": "shop/other"}, {"name": '
        answer = assert_400(await http.post("/e/dev", content=broken), "not valid JSON")
        assert len(answer["ids"]) == 2
        # Every error of the Inngest route carries `ids`, as Inngest's answers do.
        for body in (b"", b"{broken", b'{"name": ""}', b'{"name": "x", "data": {"x": NaN}}'):
            assert assert_400(await http.post("/e/dev", content=body))["ids"] == []
        # The first event invalid: nothing stored, no ids.
        answer = assert_400(await http.post("/e/dev", json=[{"data": {}}, batch[0]]),
                            "nothing was stored")
        assert answer["ids"] == []
        # The REST API's send (the dashboard's) stays all-or-nothing.
        assert_400(await http.post("/v1/events", json=batch), "event [2]", "not stored")
        assert len(await stored_events(http)) == 4


# --- 11.3: x-inngest-event-id-seed ---------------------------------------------------------------


def seed_header(millis: int, entropy: bytes) -> str:
    return f"{millis},{base64.b64encode(entropy).decode()}"


async def test_a_retried_send_with_the_same_seed_stores_and_runs_once(client: Client) -> None:
    async with client() as (http, engine):
        millis, entropy = 1_767_225_600_123, bytes(range(10))
        headers = {SEED_HEADER: seed_header(millis, entropy)}
        batch = [{"name": "shop/greet", "data": {"n": 1}}, {"name": "shop/greet",
                                                            "data": {"n": 2}},
                 {"name": "shop/greet", "id": "mine", "data": {"n": 3}}]
        first = await http.post("/e/dev", json=batch, headers=headers)
        again = await http.post("/e/dev", json=batch, headers=headers)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        ids = first.json()["ids"]
        assert again.json()["ids"] == ids and ids[2] == "mine"
        # Inngest's derivation: the seed's milliseconds, and the entropy with the event's
        # 1-based position added to its last four bytes.
        for position, event_id in enumerate(ids[:2], start=1):
            raw = ULID.from_str(event_id).bytes
            assert int.from_bytes(raw[:6], "big") == millis
            assert raw[6:12] == entropy[:6]
            assert int.from_bytes(raw[12:], "big") == int.from_bytes(entropy[6:], "big") + position
        await engine.idle()
        assert len(await stored_events(http)) == 3
        assert len(await all_runs(http)) == 3
        # Another send (a new seed) is new events; a malformed seed is ignored, as in Inngest.
        other = await http.post("/e/dev", json=batch[:1],
                                headers={SEED_HEADER: seed_header(millis, bytes(10))})
        bad_seed = await http.post("/e/dev", json=batch[:1], headers={SEED_HEADER: "x,y"})
        assert other.status_code == bad_seed.status_code == 200
        assert len({other.json()["ids"][0], bad_seed.json()["ids"][0], *ids}) == 5
        # The REST API's send honours the seed too.
        seeded = {SEED_HEADER: seed_header(millis + 1, entropy)}
        one = await http.post("/v1/events", json=batch[:1], headers=seeded)
        two = await http.post("/v1/events", json=batch[:1], headers=seeded)
        assert one.json()["data"]["ids"] == two.json()["data"]["ids"]
        await engine.idle()
        assert len(await all_runs(http)) == 6


async def test_a_partial_batch_retried_with_its_seed_stores_nothing_twice(
        client: Client) -> None:
    async with client() as (http, engine):
        headers = {SEED_HEADER: seed_header(1_767_225_600_000, b"\xff" * 10)}
        batch = [{"name": "shop/greet", "data": {"n": 1}}, {"name": "shop/greet", "ts": -1}]
        first = await http.post("/e/dev", json=batch, headers=headers)
        again = await http.post("/e/dev", json=batch, headers=headers)
        assert assert_400(first, "event [1]")["ids"] == assert_400(again, "event [1]")["ids"]
        await engine.idle()
        assert len(await stored_events(http)) == 1 and len(await all_runs(http)) == 1
