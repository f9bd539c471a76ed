"""What flow control holds back before any run exists: `GET /v1/functions/{id}/pending` lists a
function's batch and debounce windows that have not fired (key, when it fires, events held), on
the virtual clock over SQLite and Postgres, and refuses bad input naming what is wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock

T0 = "2026-01-01T00:00:00.000Z"


def make_app() -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="digest", trigger="shop/note",
                  debounce={"period": "1h", "key": "event.data.user"})
    async def digest(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="bundle", trigger="shop/item",
                  batch={"max_size": 4, "timeout": "2h", "key": "event.data.team"})
    async def bundle(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="quiet", trigger="shop/quiet", debounce={"period": "1h"})
    async def quiet(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="plain", trigger="shop/plain")
    async def plain(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    return app


@asynccontextmanager
async def serve(make_engine: Any) -> AsyncIterator[tuple[httpx.AsyncClient, stepwell.Engine]]:
    async with make_engine(make_app(), check_determinism=False) as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, engine


async def pending(http: httpx.AsyncClient, function_id: str, **params: Any) -> list[Any]:
    reply = await http.get(f"/v1/functions/{function_id}/pending", params=params)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


async def test_debounce_windows_show_their_key_latest_event_and_moving_due_time(
        make_engine: Any, clock: VirtualClock) -> None:
    async with serve(make_engine) as (http, engine):
        await engine.send("shop/note", {"user": "ada"})
        bob = await engine.send("shop/note", {"user": "bob"})
        await clock.advance("10m")
        ada = await engine.send("shop/note", {"user": "ada"})      # postpones ada's window
        assert await pending(http, "shop/digest") == [
            {"kind": "debounce", "key": "ada", "fires_at": "2026-01-01T01:10:00.000Z",
             "created_at": T0, "events": 1, "event_id": ada},
            {"kind": "debounce", "key": "bob", "fires_at": "2026-01-01T01:00:00.000Z",
             "created_at": T0, "events": 1, "event_id": bob}]
        # The bare id and the SDK-style composite id name the same function.
        assert len(await pending(http, "digest")) == len(await pending(http, "shop-digest")) == 2
        assert [w["key"] for w in await pending(http, "shop/digest", limit=1)] == ["ada"]
        quiet = await engine.send("shop/quiet", {})
        assert await pending(http, "shop/quiet") == [
            {"kind": "debounce", "key": "", "fires_at": "2026-01-01T01:10:00.000Z",
             "created_at": "2026-01-01T00:10:00.000Z", "events": 1, "event_id": quiet}]

        await clock.advance("55m")          # bob's window fired; ada's has 5 minutes left
        [run] = await engine.runs(event_id=str(bob))
        await engine.wait(run.id, timeout=10)
        assert [w["key"] for w in await pending(http, "shop/digest")] == ["ada"]


async def test_batch_windows_count_their_events_until_they_fill(make_engine: Any,
                                                                 clock: VirtualClock) -> None:
    async with serve(make_engine) as (http, engine):
        first = await engine.send("shop/item", {"team": "red"})
        await clock.advance("1m")
        for _ in range(2):
            await engine.send("shop/item", {"team": "red"})
        blue = await engine.send("shop/item", {"team": "blue"})
        assert await pending(http, "shop/bundle") == [
            {"kind": "batch", "key": "blue", "fires_at": "2026-01-01T02:01:00.000Z",
             "created_at": "2026-01-01T00:01:00.000Z", "events": 1, "event_id": blue},
            {"kind": "batch", "key": "red", "fires_at": "2026-01-01T02:00:00.000Z",
             "created_at": T0, "events": 3, "event_id": first}]
        await engine.send("shop/item", {"team": "red"})       # the fourth: the batch is full
        [run] = await engine.runs(event_id=str(first))
        assert len((await engine.wait(run.id, timeout=10)).event_ids) == 4
        assert [w["key"] for w in await pending(http, "shop/bundle")] == ["blue"]
        assert await pending(http, "shop/plain") == []


async def test_bad_input_is_refused_naming_what_is_wrong(make_engine: Any,
                                                         clock: VirtualClock) -> None:
    async with serve(make_engine) as (http, _engine):
        for path, params, status, words in [
                ("/v1/functions/shop/nope/pending", {}, 404, "no function 'shop/nope'"),
                ("/v1/functions/shop/digest/pending", {"limit": "0"}, 400,
                 "'limit' must be an integer from 1 to 1000, got '0'"),
                ("/v1/functions/shop/digest/pending", {"limit": "1001"}, 400, "from 1 to 1000"),
                ("/v1/functions/shop/digest/pending", {"limit": "ten"}, 400, "got 'ten'")]:
            bad = await http.get(path, params=params)
            assert bad.status_code == status and words in bad.json()["error"], bad.text
        assert "shop/digest" in (await http.get("/v1/functions/nope/pending")).json()["error"]
