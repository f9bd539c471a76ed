"""The connections stepwell opens to SDK apps and accepts from them: at most `sdk_concurrency`
calls in flight per app, waiting calls served in arrival order, connections kept alive and
reused, TCP_NODELAY on both sides (no ~40 ms Nagle/delayed-ACK stall per request)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import stepwell
from stepwell.cli_serve import listen
from stepwell.core.config import ConfigError
from stepwell.runtime.appconn import AppConnection
from stepwell.runtime.sdkclient import AppClients
from stepwell.server.app import create_app
from stepwell.server.connections import server_config
from stepwell.service import Service

SDK = {"x-inngest-sdk": "inngest-js:v4.24.0"}


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class HeldApp:
    """An SDK-like app that holds each call until released, counting calls in flight and the
    client connections (peer ports) they came on."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.order: list[str] = []
        self.peers: set[int] = set()
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: Request) -> Response:
        assert request.client is not None
        self.peers.add(request.client.port)
        body = await request.json()
        self.order.append(str(body.get("n", body.get("event", {}).get("data", {}).get("n"))))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return JSONResponse({"done": True}, headers=SDK)


@pytest.fixture
async def held() -> AsyncIterator[HeldApp]:
    app = HeldApp()
    server_app = Starlette(routes=[Route("/api/inngest", app.handle, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    app.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/inngest"
    server = uvicorn.Server(uvicorn.Config(server_app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield app
    app.release.set()
    server.should_exit = True
    await task
    sock.close()


async def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_calls_wait_for_a_slot_in_arrival_order(held: HeldApp) -> None:
    clients = AppClients(limit=2)
    try:
        tasks = []
        for n in range(6):
            tasks.append(asyncio.create_task(clients.post(
                f"{held.url}?fnId=f", content=b'{"n": %d}' % n, headers={}, timeout=10)))
            await asyncio.sleep(0.01)            # arrival order is creation order
        await until(lambda: held.in_flight == 2, "two calls in flight")
        await asyncio.sleep(0.05)
        assert held.in_flight == 2 and clients.in_use(held.url) == 2
        held.release.set()
        responses = await asyncio.gather(*tasks)
        assert [r.status_code for r in responses] == [200] * 6
        assert held.most == 2
        assert held.order[:2] == ["0", "1"] and held.order[2:] == ["2", "3", "4", "5"]
        # Two slots, two connections, reused by all six calls.
        assert len(held.peers) == 2, held.peers
    finally:
        await clients.aclose()


async def test_connections_to_apps_have_nodelay(held: HeldApp) -> None:
    held.release.set()
    clients = AppClients(limit=1)
    try:
        for n in range(3):
            response = await clients.post(held.url, content=b'{"n": %d}' % n, headers={},
                                          timeout=10)
            assert response.status_code == 200
        assert len(held.peers) == 1                # one keep-alive connection, reused
        [origin] = clients._origins.values()
        [connection] = origin.made
        assert isinstance(connection, AppConnection)
        assert connection._writer is not None
        assert nodelay(connection._writer.get_extra_info("socket")) == 1
    finally:
        await clients.aclose()


async def test_engine_bounds_calls_to_each_app(make_engine: Any, held: HeldApp) -> None:
    """Ten runs of an SDK function at once with `sdk_concurrency=3`: three calls in flight,
    the others wait their turn, and all ten finish."""
    registration = {"appName": "held", "url": held.url, "functions": [{
        "id": "held-fn", "name": "fn", "triggers": [{"event": "held/go"}],
        "steps": {"step": {"id": "step", "runtime": {"url": f"{held.url}?fnId=held-fn"},
                           "retries": {"attempts": 0}}}}]}
    async with make_engine(sdk_concurrency=3) as engine:
        await engine._worker.registrar.register(registration)
        ids = await engine.send([{"name": "held/go", "data": {"n": n}} for n in range(10)])
        await until(lambda: held.in_flight == 3, "three calls in flight")
        await asyncio.sleep(0.1)
        assert held.in_flight == 3
        held.release.set()
        runs = [await engine.wait(r.id) for i in ids for r in await engine.runs(event_id=i)]
    assert [r.status for r in runs] == ["completed"] * 10
    assert held.most == 3


def test_sdk_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="sdk_concurrency must be at least 1"):
        stepwell.Engine(db="sqlite:///:memory:", sdk_concurrency=0)


async def test_server_accepts_connections_with_nodelay(tmp_path: Any) -> None:
    """The sockets uvicorn accepts for the stepwell server (event API, checkpoints), with the
    listening socket and server configuration `stepwell dev|serve|start` use, have
    TCP_NODELAY (a socket from `socket.create_server` gives accepted connections without it)."""
    service = Service.for_apps([], db=f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_app(service, manage_engine=True)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient() as client:
            await until(lambda: server.started, "the server to start")
            response = await client.get(f"{url}/health")
            assert response.status_code == 200
            accepted = [c.transport.get_extra_info("socket")
                        for c in server.server_state.connections]
            assert accepted and all(nodelay(s) == 1 for s in accepted)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_a_started_run_keeps_its_turn_until_it_suspends(make_engine: Any) -> None:
    """With one slot per app, three 2-call runs sent together: each run's calls come one after
    the other (a run that started finishes first) instead of every run's first call, then every
    run's second call."""
    calls: list[int] = []

    async def handle(request: Request) -> Response:
        body = await request.json()
        calls.append(body["event"]["data"]["n"])
        if not body["steps"]:
            return JSONResponse([{"id": "h1", "op": "StepRun", "displayName": "one",
                                  "data": 1}], status_code=206, headers=SDK)
        return JSONResponse({"done": body["event"]["data"]["n"]}, headers=SDK)

    app = Starlette(routes=[Route("/api/inngest", handle, methods=["POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/inngest"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    registration = {"appName": "turns", "url": url, "functions": [{
        "id": "turns-fn", "name": "fn", "triggers": [{"event": "turns/go"}],
        "steps": {"step": {"id": "step", "runtime": {"url": f"{url}?fnId=turns-fn"},
                           "retries": {"attempts": 0}}}}]}
    try:
        async with make_engine(sdk_concurrency=1) as engine:
            await engine._worker.registrar.register(registration)
            ids = await engine.send([{"name": "turns/go", "data": {"n": n}} for n in range(3)])
            runs = [await engine.wait(r.id) for i in ids for r in await engine.runs(event_id=i)]
        assert sorted(r.output["done"] for r in runs) == [0, 1, 2]
        assert len(calls) == 6
        assert calls[0] == calls[1] and calls[2] == calls[3] and calls[4] == calls[5], calls
    finally:
        server.should_exit = True
        await task
        sock.close()
