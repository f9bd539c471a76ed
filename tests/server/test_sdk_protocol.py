"""The HTTP executor against a scripted SDK app on a real socket: parallel planning, errors,
malformed and non-SDK responses, unreachable apps; and the registration endpoint's checks.

The real official SDKs are exercised in tests/inngest; this scripted app exists to produce the
responses a healthy SDK never sends.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.testing import VirtualClock

Reply = tuple[int, dict[str, str], Any]
SDK = {"x-inngest-sdk": "inngest-py:v0.5.19", "content-type": "application/json"}


class FakeSDK:
    """An HTTP app that answers call requests with whatever `script` returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.provider_calls: list[Request] = []     # requests to /provider/... (AI, fetch)
        self.script: Callable[[str, dict[str, Any]], Reply] = lambda step, body: (200, SDK, None)
        self.url = ""

    async def handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        step = request.query_params.get("stepId", "")
        self.calls.append((step, body))
        status, headers, payload = self.script(step, body)
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return Response(content, status_code=status, headers=headers)

    async def provider(self, request: Request) -> Response:
        """A model provider / upstream API for AIGateway and Gateway ops: records the request,
        answers 204 on `/provider/empty`, else JSON."""
        self.provider_calls.append(request)
        if request.url.path.endswith("/redirect"):
            return Response(status_code=302, headers={"location": request.query_params["to"]})
        if request.url.path.endswith("/empty"):
            return Response(status_code=204, headers={"x-upstream": "yes"})
        return Response(json.dumps({"ok": True, "path": request.url.path}),
                        media_type="application/json")


@pytest.fixture
async def fake_sdk() -> AsyncIterator[FakeSDK]:
    fake = FakeSDK()
    app = Starlette(routes=[Route("/api/inngest", fake.handle, methods=["POST"]),
                            Route("/provider/{rest:path}", fake.provider,
                                  methods=["GET", "POST", "DELETE"])])
    sock = socket.create_server(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/inngest"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield fake
    server.should_exit = True
    await task
    sock.close()


def registration(url: str, retries: int = 2, **options: Any) -> dict[str, Any]:
    return {"appName": "fake", "url": url, "functions": [{
        "id": "fake-fn", "name": "fn", "triggers": [{"event": "fake/go"}],
        "steps": {"step": {"id": "step", "runtime": {"url": f"{url}?fnId=fake-fn&stepId=step"},
                           "retries": {"attempts": retries}}}, **options}]}


async def start_run(engine: stepwell.Engine, fake: FakeSDK, retries: int = 2) -> str:
    await engine._worker.registrar.register(registration(fake.url, retries))
    event_id = await engine.send("fake/go", {"n": 1})
    await engine.idle()
    [run] = await engine.runs(event_id=event_id)
    return run.id


async def test_parallel_steps_are_planned_then_run_by_targeted_calls(
        make_engine: Any, fake_sdk: FakeSDK) -> None:
    def script(step: str, body: dict[str, Any]) -> Reply:
        steps = body["steps"]
        if step == "step" and not steps:
            return 206, SDK, [{"id": "ha", "op": "StepPlanned", "displayName": "a"},
                              {"id": "hb", "op": "StepPlanned", "displayName": "b"}]
        if step in ("ha", "hb"):
            assert body["ctx"]["disable_immediate_execution"] is True
            return 206, SDK, [{"id": step, "op": "StepRun", "displayName": step[1],
                               "data": step.upper()}]
        return 200, SDK, {"a": steps["ha"]["data"], "b": steps["hb"]["data"],
                          "stack": body["ctx"]["stack"]["stack"]}

    fake_sdk.script = script
    async with make_engine() as engine:
        run = await engine.wait(await start_run(engine, fake_sdk))
    assert run.status == "completed"
    assert run.output["a"] == "HA" and run.output["b"] == "HB"
    assert sorted(run.output["stack"]) == ["ha", "hb"]
    assert [c[0] for c in fake_sdk.calls].count("step") == 2
    assert sorted(s.id for s in run.steps) == ["a", "b"]


async def test_step_error_is_retried_with_backoff_then_fails(make_engine: Any,
                                                             fake_sdk: FakeSDK,
                                                             clock: VirtualClock) -> None:
    attempts: list[int] = []

    def script(step: str, body: dict[str, Any]) -> Reply:
        if "hx" in body["steps"]:
            return 200, SDK, {"saw": body["steps"]["hx"]}
        attempts.append(body["ctx"]["attempt"])
        assert body["ctx"]["max_attempts"] == 3
        return 206, SDK, [{"id": "hx", "op": "StepError", "displayName": "x",
                           "error": {"name": "Error", "message": f"boom {len(attempts)}"}}]

    fake_sdk.script = script
    async with make_engine(clock=clock) as engine:
        run_id = await start_run(engine, fake_sdk)
        await clock.advance("2h")
        run = await engine.wait(run_id)
    assert attempts == [0, 1, 2]
    assert run.status == "completed"
    assert run.output == {"saw": {"error": {"name": "Error", "message": "boom 3"}}}


@pytest.mark.parametrize(("reply", "fragment"), [
    ((200, {"content-type": "application/json"}, {"ok": 1}), "without an x-inngest-sdk header"),
    ((206, SDK, [{"op": "StepRun"}]), "has no step 'id'"),
    ((206, SDK, {"id": "h", "op": "Teleport"}), "opcode Teleport is not supported"),
    ((502, {"content-type": "text/html"}, b"<html>bad gateway</html>"), "x-inngest-sdk"),
])
async def test_malformed_or_foreign_responses_fail_clearly(
        make_engine: Any, fake_sdk: FakeSDK, clock: VirtualClock,
        reply: Reply, fragment: str) -> None:
    fake_sdk.script = lambda step, body: reply
    async with make_engine(clock=clock) as engine:
        run_id = await start_run(engine, fake_sdk, retries=1)
        await clock.advance("1h")
        run = await engine.wait(run_id)
        events = [e.name for e, _ in await engine.events()]
    text = json.dumps(run.error) + json.dumps([s.error for s in run.steps])
    assert fragment in text
    assert run.status in ("failed", "completed")
    assert "fake/go" in events


async def test_no_retry_header_fails_at_once_with_the_sdk_error(make_engine: Any,
                                                                 fake_sdk: FakeSDK) -> None:
    fake_sdk.script = lambda step, body: (
        400, {**SDK, "x-inngest-no-retry": "true"},
        {"name": "NonRetriableError", "message": "invalid payload", "stack": "at x"})
    async with make_engine() as engine:
        run = await engine.wait(await start_run(engine, fake_sdk, retries=5))
    assert run.status == "failed"
    assert run.error is not None and run.error["message"] == "invalid payload"
    assert len(fake_sdk.calls) == 1


async def test_unreachable_app_is_retried_then_the_run_continues(
        make_engine: Any, fake_sdk: FakeSDK, clock: VirtualClock) -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                       # nothing listens there now
    async with make_engine(clock=clock) as engine:
        await engine._worker.registrar.register(registration(f"http://127.0.0.1:{port}/api/inngest"))
        event_id = await engine.send("fake/go", {})
        await engine.idle()
        [run] = await engine.runs(event_id=event_id)
        current = await engine.get_run(run.id)
        assert current is not None and current.status == "running"
        assert "SDKUnreachable" in json.dumps([s.failures for s in current.steps])
        # the app comes up (same function now served by the fake app) and the retry succeeds
        await engine._worker.registrar.register(registration(fake_sdk.url))
        fake_sdk.script = lambda step, body: (200, SDK, "recovered")
        await clock.advance("2h")
        run = await engine.wait(run.id)
    assert run.status == "completed" and run.output == "recovered"


async def test_register_endpoint_rejects_bad_bodies_and_checks_keys(make_engine: Any) -> None:
    async with make_engine() as engine:
        service = Service(engine)
        dev = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)),
                                base_url="http://localhost")
        key, event_key = "signkey-prod-" + "0123456789abcdef" * 4, "ek-0123456789abcdef"
        prod = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(
            service, event_keys=[event_key], signing_keys=[key])), base_url="http://localhost")
        async with dev, prod:
            bad = await dev.post("/fn/register", json={"appName": "a", "url": "http://x",
                                                       "functions": [{"id": "f", "x": 1}]})
            assert bad.status_code == 400
            assert "unknown options ['x']" in bad.json()["error"]
            assert bad.json()["status"] == 400
            good = await dev.post("/fn/register", json=registration("http://127.0.0.1:1/x"))
            assert good.status_code == 200 and good.json()["ok"] is True
            again = await dev.post("/fn/register", json=registration("http://127.0.0.1:1/x"))
            assert again.json()["modified"] is False
            assert (await prod.post("/fn/register", json=registration("http://h/x"),
                                    headers={"authorization": "Bearer undefined"})
                    ).status_code == 401
            from stepwell.core.protocol import hashed_key

            ok = await prod.post("/fn/register", json=registration("http://127.0.0.1:1/x"),
                                 headers={"authorization":
                                          f"Bearer {hashed_key(key)}"})
            assert ok.status_code == 200
            assert (await prod.post("/e/nope", json={"name": "a", "data": {}})).status_code == 401
            assert (await prod.post(f"/e/{event_key}", json={"name": "a", "data": {}})
                    ).status_code == 200
            apps = (await dev.get("/v1/apps")).json()["data"]
            # Only the good registration made an app; refused ones are listed with why.
            assert [a["app_id"] for a in apps if a["error"] is None] == ["fake"]
            refused = [a for a in apps if a["error"] is not None]
            assert refused and all(a["functions"] == [] and "sync refused" in a["error"]
                                   for a in refused), refused


async def test_large_state_is_fetched_through_the_api(make_engine: Any,
                                                     fake_sdk: FakeSDK) -> None:
    """Past 4 MiB the call carries no events or steps (`use_api`); the SDK fetches them from
    /v0/runs/{id}/batch and /actions, which must return exactly what was left out."""
    big = "x" * (3 * 1024 * 1024)
    seen: list[dict[str, Any]] = []

    def script(step: str, body: dict[str, Any]) -> Reply:
        seen.append(body)
        if body["use_api"]:
            return 200, SDK, "done"
        n = len(body["steps"])
        return 206, SDK, [{"id": f"h{n}", "op": "StepRun", "displayName": f"s{n}", "data": big}]

    fake_sdk.script = script
    async with make_engine() as engine:
        run_id = await start_run(engine, fake_sdk)
        run = await engine.wait(run_id)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Service(engine))),
                                base_url="http://localhost")
        async with api:
            batch = (await api.get(f"/v0/runs/{run_id}/batch")).json()
            actions = (await api.get(f"/v0/runs/{run_id}/actions")).json()
            missing = await api.get("/v0/runs/nope/actions")
    assert run.status == "completed" and run.output == "done"
    last = seen[-1]
    assert last["use_api"] is True and last["ctx"]["use_api"] is True
    assert last["events"] == [] and last["steps"] == {}
    assert [e["name"] for e in batch] == ["fake/go"]
    assert sorted(actions) == ["h0", "h1"] and actions["h0"] == {"data": big}
    assert missing.status_code == 404


async def test_native_and_sdk_functions_invoke_each_other(make_engine: Any,
                                                          fake_sdk: FakeSDK) -> None:
    """One engine, two executors: a native function invokes an SDK function by its composite
    id, and an SDK function invokes a native one (SDKs name it `<app>-<fn>`)."""
    app = stepwell.App("native")

    @app.function(id="child", trigger="native/child")
    async def child(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return {"native_saw": ctx.event.data}

    @app.function(id="parent", trigger="native/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> Any:
        return await step.invoke("call-sdk", function="fake-fn", data={"from": "native"})

    def script(step: str, body: dict[str, Any]) -> Reply:
        event = body["event"]
        if event["name"] == "inngest/function.invoked":          # invoked by the native parent
            return 200, SDK, {"sdk_saw": event["data"]}
        if "hc" in body["steps"]:                                 # the native child finished
            return 200, SDK, body["steps"]["hc"]
        return 206, SDK, [{"id": "hc", "op": "InvokeFunction", "displayName": "call-native",
                           "opts": {"function_id": "native-child",
                                    "payload": {"data": {"from": "sdk"}}}}]

    fake_sdk.script = script
    async with make_engine(app) as engine:
        await engine._worker.registrar.register(registration(fake_sdk.url))
        [native_run] = await engine.runs(event_id=await engine.send("native/parent", {}))
        [sdk_run] = await engine.runs(event_id=await engine.send("fake/go", {}))
        native_run = await engine.wait(native_run.id)
        sdk_run = await engine.wait(sdk_run.id)
    assert native_run.output == {"sdk_saw": {"from": "native"}}
    assert sdk_run.output == {"data": {"native_saw": {"from": "sdk"}}}


async def test_ai_gateway_authenticates_per_format_and_gateway_passes_status(
        make_engine: Any, fake_sdk: FakeSDK) -> None:
    """Three server-performed steps reported at once: an Anthropic and a Gemini inference and a
    fetch answered 204 (whose Response must have a null body)."""
    base = fake_sdk.url.rsplit("/api/inngest", 1)[0] + "/provider"
    ops = [
        {"id": "ha", "op": "AIGateway", "displayName": "claude", "opts": {
            "type": "step.ai.infer", "url": f"{base}/messages", "format": "anthropic",
            "auth_key": "sk-ant", "headers": {"anthropic-version": "2023-06-01"},
            "body": {"model": "claude", "messages": []}}},
        {"id": "hg", "op": "AIGateway", "displayName": "gemini", "opts": {
            "type": "step.ai.infer", "url": f"{base}/gemini:generateContent", "format": "gemini",
            "auth_key": "g-key", "body": {"contents": []}}},
        {"id": "hf", "op": "Gateway", "displayName": "step.fetch: 127.0.0.1", "opts": {
            "url": f"{base}/empty", "method": "DELETE", "headers": {"x-a": "1"}}},
    ]

    def script(step: str, body: dict[str, Any]) -> Reply:
        steps = body["steps"]
        if {"ha", "hg", "hf"} <= set(steps):
            return 200, SDK, steps
        return 206, SDK, ops

    fake_sdk.script = script
    async with make_engine() as engine:
        run = await engine.wait(await start_run(engine, fake_sdk))
    assert run.status == "completed", run
    assert run.output["ha"] == {"data": {"ok": True, "path": "/provider/messages"}}
    assert run.output["hg"] == {"data": {"ok": True,
                                         "path": "/provider/gemini:generateContent"}}
    fetched = run.output["hf"]["data"]
    assert fetched["status_code"] == 204 and fetched["body"] is None
    assert fetched["headers"]["x-upstream"] == "yes"
    by_path = {r.url.path: r for r in fake_sdk.provider_calls}
    claude = by_path["/provider/messages"]
    assert claude.headers["x-api-key"] == "sk-ant" and "authorization" not in claude.headers
    assert claude.headers["anthropic-version"] == "2023-06-01"
    assert by_path["/provider/gemini:generateContent"].query_params["key"] == "g-key"
    assert by_path["/provider/empty"].method == "DELETE"
    assert by_path["/provider/empty"].headers["x-a"] == "1"


def provider_ops(base: str, target: str) -> list[dict[str, Any]]:
    """A fetch and an inference, both to `base`'s redirect route pointing at `target`."""
    redirect = f"{base}/redirect?to={target}"
    return [{"id": "hf", "op": "Gateway", "displayName": "fetch", "opts": {"url": redirect}},
            {"id": "ha", "op": "AIGateway", "displayName": "infer", "opts": {
                "url": redirect, "format": "openai-chat", "auth_key": "sk", "body": {}}}]


def answer_ops(ops: list[dict[str, Any]]) -> Callable[[str, dict[str, Any]], Reply]:
    def script(step: str, body: dict[str, Any]) -> Reply:
        steps = body["steps"]
        return (200, SDK, steps) if {"hf", "ha"} <= set(steps) else (206, SDK, ops)
    return script


async def test_server_side_requests_follow_redirects_within_the_allow_list(
        make_engine: Any, fake_sdk: FakeSDK) -> None:
    """step.fetch and step.ai.infer follow a redirect to an allowed host (each hop checked)."""
    base = fake_sdk.url.rsplit("/api/inngest", 1)[0] + "/provider"
    fake_sdk.script = answer_ops(provider_ops(base, f"{base}/landed"))
    async with make_engine(app_url_allow=["127.0.0.1"]) as engine:
        run = await engine.wait(await start_run(engine, fake_sdk))
    assert run.status == "completed", run
    assert run.output["hf"]["data"]["status_code"] == 200
    assert json.loads(run.output["hf"]["data"]["body"])["path"] == "/provider/landed"
    assert run.output["ha"]["data"]["path"] == "/provider/landed"


async def test_server_side_requests_never_follow_a_redirect_out_of_the_allow_list(
        make_engine: Any, fake_sdk: FakeSDK) -> None:
    """A redirect from an allowed upstream to a host outside `--app-url-allow` (here
    `localhost`, the same real server under a name the list does not hold) is not followed:
    the step fails at once, without retries, naming the refused URL and the list; the target
    never sees a request."""
    base = fake_sdk.url.rsplit("/api/inngest", 1)[0] + "/provider"
    port = base.split(":")[2].split("/")[0]
    fake_sdk.script = answer_ops(provider_ops(base, f"http://localhost:{port}/provider/secret"))
    async with make_engine(app_url_allow=["127.0.0.1"]) as engine:
        run = await engine.wait(await start_run(engine, fake_sdk, retries=3))
    # The scripted SDK hands the steps' outcomes back as the output: both failed.
    paths = [r.url.path for r in fake_sdk.provider_calls]
    assert "/provider/secret" not in paths
    assert paths == ["/provider/redirect"] * 2               # one each, no retries
    for step in ("hf", "ha"):
        message = run.output[step]["error"]["message"]
        assert "'http://localhost:" in message and "/provider/secret' is not allowed" in message
        assert "'localhost' is not in the server's app URL allow-list (127.0.0.1)" in message


async def test_server_side_requests_to_a_disallowed_host_are_refused_at_once(
        make_engine: Any, fake_sdk: FakeSDK) -> None:
    base = fake_sdk.url.rsplit("/api/inngest", 1)[0] + "/provider"
    # The app is allowed, the host its steps fetch from is not.
    fake_sdk.script = answer_ops(provider_ops(base.replace("127.0.0.1", "localhost"),
                                              f"{base}/landed"))
    async with make_engine(app_url_allow=["127.0.0.1"]) as engine:
        run = await engine.wait(await start_run(engine, fake_sdk, retries=3))
    assert fake_sdk.provider_calls == []
    for step in ("hf", "ha"):
        message = run.output[step]["error"]["message"]
        assert "is not in the server's app URL allow-list" in message, run


async def test_wait_for_signal_resolves_conflicts_and_times_out(
        make_engine: Any, fake_sdk: FakeSDK, clock: VirtualClock) -> None:
    """`engine.send_signal` resumes the run holding the name; onConflict "fail" fails the
    newcomer's step; nobody waiting is None; an unsent signal's wait resolves to null."""

    def script(step: str, body: dict[str, Any]) -> Reply:
        if "hs" in body["steps"]:
            return 200, SDK, {"got": body["steps"]["hs"]}
        data = body["event"]["data"]
        return 206, SDK, [{"id": "hs", "op": "WaitForSignal", "name": data["signal"],
                           "displayName": "wait-signal",
                           "opts": {"signal": data["signal"], "timeout": "1h",
                                    "conflict": data.get("conflict")}}]

    fake_sdk.script = script
    async with make_engine(clock=clock) as engine:
        await engine._worker.registrar.register(registration(fake_sdk.url))
        # The holder first, on its own: which wait holds a name depends on the order the
        # waits are registered in, and runs sent together may register in either order.
        ids = [await engine.send("fake/go", {"signal": "approve"})]
        await engine.idle()
        ids += [await engine.send("fake/go", data) for data in (
            {"signal": "approve", "conflict": "fail"}, {"signal": "never"})]
        await engine.idle()
        holder, loser, lonely = [(await engine.runs(event_id=i))[0].id for i in ids]
        loser_run = await engine.wait(loser)
        assert loser_run.output["got"]["error"]["name"] == "SignalConflictError"
        assert holder in loser_run.output["got"]["error"]["message"]
        assert await engine.send_signal("approve", {"ok": 1}) == holder
        assert (await engine.wait(holder)).output == {
            "got": {"signal": "approve", "data": {"ok": 1}}}
        assert await engine.send_signal("approve", {"ok": 2}) is None
        await clock.advance("2h")
        assert (await engine.wait(lonely)).output == {"got": None}
        assert await engine.send_signal("never") is None
