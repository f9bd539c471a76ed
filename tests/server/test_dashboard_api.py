"""The dashboard's server side over HTTP (in-process ASGI, real engine on SQLite and Postgres):
who may call what in production mode, the JSON routes added for the dashboard, and the page and
asset routes. The pages themselves are tested in a real browser in test_dashboard.py."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.routing import Route

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock

HEX = secrets.token_hex(32)
SIGNING_KEY = f"signkey-test-{HEX}"
EVENT_KEY = secrets.token_hex(16)
Client = Callable[..., Any]


def make_app() -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="greet", trigger="shop/greet",
                  throttle={"limit": 5, "period": "1s", "key": "event.data.name"},
                  concurrency=[{"limit": 2, "key": "event.data.name", "scope": "env"}],
                  cancel_on=[stepwell.Cancel(event="shop/stop", match="data.name",
                                             if_="async.data.force == true", timeout="1h")],
                  timeouts={"finish": "90m"}, idempotency="event.data.name")
    async def greet(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return str(await step.run("name", lambda: ctx.event.data.get("name", "world")))

    @app.function(id="batched", trigger="shop/item",
                  batch={"max_size": 10, "timeout": "5s", "key": "event.data.cart"},
                  retries=0)
    async def batched(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return len(ctx.events)

    @app.function(id="slow", trigger="shop/slow",
                  debounce={"period": "1s", "timeout": "1m"},
                  priority={"run": "event.data.vip ? 100 : 0"},
                  singleton={"key": "event.data.user", "mode": "cancel"},
                  rate_limit={"limit": 10, "period": "1m"})
    async def slow(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "1h")

    return app


@pytest.fixture
def client(make_engine: Any) -> Client:
    """`async with client(**create_app_options) as (http, engine, asgi):`."""

    @asynccontextmanager
    async def factory(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any, Any]]:
        async with make_engine(make_app()) as engine:
            asgi = create_app(Service(engine), **options)
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
                yield http, engine, asgi

    return factory


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


# --- production mode ---------------------------------------------------------------------------


async def test_every_rest_route_needs_the_signing_key_in_production_mode(client: Client) -> None:
    async with client(signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY]) as (http, _, asgi):
        # An approval link's signed token is its credential (`security: []` in the OpenAPI
        # document): it takes no signing key, and without a valid token gets 403.
        open_routes = {"/v1/approvals/{token}"}
        guarded = [(route.path, method) for route in asgi.routes if isinstance(route, Route)
                   and (route.path.startswith("/v1/") or route.path == "/dev")
                   and route.path not in open_routes
                   for method in sorted(route.methods or ()) if method != "HEAD"]
        reply = await http.post("/v1/approvals/x", json={"approved": True})
        assert reply.status_code == 403 and "not valid" in reply.json()["error"]
        assert len(guarded) >= 15
        for path, method in guarded:
            for headers in ({}, bearer("signkey-test-" + "0" * 64), {"authorization": "Basic x"}):
                reply = await http.request(method, concrete(path), headers=headers, json={})
                assert reply.status_code == 401, (method, path, headers, reply.text)
                assert reply.headers["www-authenticate"].startswith("Bearer")
                assert reply.json()["status"] == 401


async def test_missing_and_wrong_keys_get_different_messages(client: Client) -> None:
    async with client(signing_keys=[SIGNING_KEY]) as (http, _, _asgi):
        missing = await http.get("/v1/runs")
        assert "production mode" in missing.json()["error"]
        assert "production mode" in (await http.get("/v1/runs",
                                                    headers=bearer(""))).json()["error"]
        wrong = await http.get("/v1/runs", headers=bearer("signkey-test-abc"))
        assert "not accepted" in wrong.json()["error"]
        # The key's hex part must match exactly: a prefix of it is not the key.
        assert (await http.get("/v1/runs", headers=bearer(HEX[:-1]))).status_code == 401
        assert (await http.get("/v1/runs", headers=bearer(HEX + "0"))).status_code == 401


async def test_the_key_is_accepted_with_or_without_its_prefix_or_hashed(client: Client) -> None:
    hashed = hashlib.sha256(bytes.fromhex(HEX)).hexdigest()
    other_key = f"signkey-prod-{secrets.token_hex(32)}"
    async with client(signing_keys=[other_key, SIGNING_KEY]) as (http, _, _asgi):
        for token in (SIGNING_KEY, HEX, f"signkey-prod-{HEX}", hashed, other_key):
            reply = await http.get("/v1/runs", headers=bearer(token))
            assert reply.status_code == 200, (token, reply.text)
        lower = await http.get("/v1/functions", headers={"authorization": f"bearer {HEX}"})
        assert lower.status_code == 200


async def test_open_routes_stay_open_and_others_keep_their_own_keys(client: Client) -> None:
    hashed = hashlib.sha256(bytes.fromhex(HEX)).hexdigest()
    async with client(signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY]) as (http, _, _asgi):
        for path in ("/health", "/openapi.json", "/dashboard", "/dashboard/runs/abc",
                     "/dashboard/assets/app.js"):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.get("/")).status_code == 307
        # Events: the event key, not the signing key.
        sent = await http.post(f"/e/{EVENT_KEY}", json={"name": "shop/greet"})
        assert sent.status_code == 200
        assert (await http.post(f"/e/{SIGNING_KEY}", json={"name": "x"})).status_code == 401
        # SDK routes: the hashed key, as before.
        assert (await http.get("/v0/runs/nope/batch")).status_code == 401
        assert (await http.get("/v0/runs/nope/batch", headers=bearer(hashed))).status_code == 404


async def test_dev_mode_asks_for_nothing(client: Client) -> None:
    async with client() as (http, _, _asgi):
        assert (await http.get("/v1/runs")).status_code == 200
        assert (await http.get("/v1/runs", headers=bearer("anything"))).status_code == 200
        assert (await http.get("/dev")).json()["mode"] == "dev"


# --- the dashboard's JSON ----------------------------------------------------------------------


async def test_send_events_through_the_rest_api(client: Client) -> None:
    async with client(signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY]) as (http, engine, _asgi):
        auth = bearer(SIGNING_KEY)
        reply = await http.post("/v1/events", headers=auth,
                                json={"name": "shop/greet", "data": {"name": "ada"}})
        assert reply.status_code == 200, reply.text
        [event_id] = reply.json()["data"]["ids"]
        await engine.idle()
        [run] = (await http.get("/v1/runs", headers=auth)).json()["data"]
        assert (run["event_id"], run["event_name"]) == (event_id, "shop/greet")
        assert run["output"] == "ada"
        [light] = (await http.get("/v1/runs", headers=auth,
                                  params={"outputs": "false"})).json()["data"]
        assert light["output"] is None and light["run_id"] == run["run_id"]
        bad_flag = await http.get("/v1/runs", headers=auth, params={"outputs": "nope"})
        assert bad_flag.status_code == 400 and "outputs" in bad_flag.json()["error"]
        [event] = (await http.get(f"/v1/runs/{run['run_id']}/events",
                                  headers=auth)).json()["data"]
        assert (event["id"], event["name"], event["data"]) == (event_id, "shop/greet",
                                                                {"name": "ada"})
        bad = await http.post("/v1/events", headers=auth,
                              json={"name": "shop/greet", "data": [1]})
        assert bad.status_code == 400 and "must be an object" in bad.json()["error"]
        missing = await http.get("/v1/runs/nope/events", headers=auth)
        assert missing.status_code == 404 and "no run" in missing.json()["error"]


async def test_a_batch_run_lists_all_its_events(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, _engine, _asgi):
        ids = (await http.post("/v1/events", json=[
            {"name": "shop/item", "data": {"cart": "c1", "n": n}} for n in range(3)])
               ).json()["data"]["ids"]
        await clock.advance("10s")
        [run] = (await http.get("/v1/runs", params={"function_id": "batched"})).json()["data"]
        assert run["status"] == "Completed" and run["output"] == 3
        events = (await http.get(f"/v1/runs/{run['run_id']}/events")).json()["data"]
        assert [e["id"] for e in events] == ids


async def test_functions_list_their_flow_control_settings(client: Client) -> None:
    async with client() as (http, _, _asgi):
        listed = {f["id"]: f for f in (await http.get("/v1/functions")).json()["data"]}
        assert listed["shop/greet"]["config"] == {
            "concurrency": [{"limit": 2, "key": "event.data.name", "scope": "env"}],
            "throttle": {"limit": 5, "period": "1s", "burst": 1, "key": "event.data.name"},
            "idempotency": "event.data.name",
            "cancel_on": [{"event": "shop/stop", "match": "data.name",
                           "if": "async.data.force == true", "timeout": "1h"}],
            "timeouts": {"finish": "1h30m"},
        }
        assert listed["shop/batched"]["config"] == {
            "batch": {"max_size": 10, "timeout": "5s", "key": "event.data.cart"}}
        assert listed["shop/batched"]["retries"] == 0
        assert listed["shop/slow"]["config"] == {
            "rate_limit": {"limit": 10, "period": "1m"},
            "debounce": {"period": "1s", "timeout": "1m"},
            "priority": {"run": "event.data.vip ? 100 : 0"},
            "singleton": {"key": "event.data.user", "mode": "cancel"},
        }


async def test_run_counts_by_status(client: Client, clock: VirtualClock) -> None:
    async with client() as (http, engine, _asgi):
        empty = (await http.get("/v1/stats/functions")).json()["data"]
        assert [s["id"] for s in empty] == ["shop/batched", "shop/greet", "shop/slow"]
        assert all(s["total"] == 0 and s["capped"] == [] for s in empty)
        await http.post("/v1/events", json=[{"name": "shop/greet", "data": {"name": n}}
                                            for n in ("a", "b", "c")])
        await engine.idle()
        stats = {s["id"]: s for s in (await http.get("/v1/stats/functions")).json()["data"]}
        assert stats["shop/greet"]["counts"] == {
            "Queued": 0, "Running": 0, "Completed": 3, "Failed": 0, "Cancelled": 0,
            "Skipped": 0}
        assert stats["shop/greet"]["total"] == 3
        capped = {s["id"]: s for s in await Service(engine).function_run_counts(cap=2)}
        assert capped["shop/greet"]["counts"]["Completed"] == 2
        assert capped["shop/greet"]["capped"] == ["Completed"]


# --- the page and its assets -------------------------------------------------------------------


async def test_pages_and_assets_are_served(client: Client) -> None:
    async with client() as (http, _, _asgi):
        root = await http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/dashboard/runs"
        for path in ("/dashboard", "/dashboard/", "/dashboard/runs/01ABC", "/dashboard/nope"):
            page = await http.get(path)
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert '<script type="module" src="/dashboard/assets/app.js?v=' in page.text
        script = await http.get("/dashboard/assets/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "export async function render" in script.text
        assert (await http.get("/dashboard/assets/style.css")).headers[
            "content-type"].startswith("text/css")
        again = await http.get("/dashboard/assets/app.js",
                               headers={"if-none-match": script.headers["etag"]})
        assert again.status_code == 304
        missing = await http.get("/dashboard/assets/nope.js")
        assert missing.status_code == 404 and "no route" in missing.json()["error"]
