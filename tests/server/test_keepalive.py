"""Error answers must not poison a keep-alive connection (issue 10.9).

A real uvicorn serves the real app on a free loopback port. After each kind of error answer
(a 500 from a bug, a 413 whose body was never read, a 401 before the body was read, a 400 for
bad JSON) the client's next request on the same connection must work: either the server keeps
the connection usable, or it says `Connection: close` so the client opens a new one. Checked
at the protocol level (one socket, h11 as the client) and with httpx's keep-alive pool.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from typing import Any

import h11
import httpx
import pytest
import uvicorn

import stepwell
from stepwell.core.models import MAX_EVENT_BYTES
from stepwell.server.app import create_app
from stepwell.service import Service

DEADLINE_S = 20.0
KEY = "the-event-key-0123456789"


class BuggyService(Service):
    """A service with a bug in one use case, standing in for any bug a 500 comes from."""

    async def list_apps(self) -> list[dict[str, Any]]:
        raise RuntimeError("a bug")


def make_app() -> stepwell.App:
    app = stepwell.App("ka")

    @app.function(id="f", trigger="ka/go")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> str:
        return "ok"

    return app


@asynccontextmanager
async def served(make_engine: Callable[..., Any], **options: Any) -> AsyncIterator[int]:
    """The app under a real uvicorn on a free port; yields the port."""
    async with make_engine(make_app()) as engine:
        config = uvicorn.Config(create_app(BuggyService(engine), **options), host="127.0.0.1",
                                port=0, lifespan="off", log_level="critical",
                                access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while not server.started:
            assert loop.time() < deadline and not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield port
        finally:
            server.should_exit = True
            await task


def exchange(sock: socket.socket, conn: h11.Connection, request: h11.Request,
             body: bytes | None) -> tuple[h11.Response, bytes] | None:
    """Send one request on the socket and read its answer; None if the server closed the
    connection without answering (the poisoned case)."""
    sock.sendall(conn.send(request))
    declared = dict(request.headers).get(b"content-length")
    if body is not None:
        sock.sendall(conn.send(h11.Data(data=body)))
    if body is not None or declared is None:
        sock.sendall(conn.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    content = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data and response is None:
                return None
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            content += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, content
        elif isinstance(event, h11.ConnectionClosed):
            return None


def get(path: str) -> h11.Request:
    return h11.Request(method="GET", target=path, headers=[("host", "127.0.0.1")])


def post(path: str, length: int, **extra: str) -> h11.Request:
    headers = [("host", "127.0.0.1"), ("content-type", "application/json"),
               ("content-length", str(length)), *extra.items()]
    return h11.Request(method="POST", target=path, headers=headers)


def over_the_limit() -> h11.Request:
    # Declared too large: the server answers 413 before reading the body, which is never sent.
    return post(f"/e/{KEY}", 64 * 1024 * 1024)     # over MAX_EVENT_REQUEST_BYTES


BAD = b"{not json"
POISON = b'{"name":"ka/go","data":{"x":1e400}}'
ERRORS: dict[str, tuple[Callable[[], h11.Request], bytes | None, int]] = {
    "500 from a bug": (lambda: get("/v1/apps"), None, 500),
    "413 before the body was read": (over_the_limit, None, 413),
    "400 bad JSON": (lambda: post("/v1/signals", len(BAD)), BAD, 400),
    "400 poison JSON": (lambda: post(f"/e/{KEY}", len(POISON)), POISON, 400),
    "404 no route": (lambda: get("/nope"), None, 404),
    "401 before the body was read": (
        lambda: post("/e/wrong-key", len(POISON)), POISON, 401),
}


@pytest.mark.parametrize("kind", list(ERRORS))
async def test_the_next_request_on_the_connection_works_after_an_error(
        make_engine: Callable[..., Any], kind: str) -> None:
    make_request, body, status = ERRORS[kind]
    async with served(make_engine, event_keys=[KEY]) as port:

        def client() -> None:
            with closing(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
                         ) as sock:
                conn = h11.Connection(h11.CLIENT)
                first = exchange(sock, conn, make_request(), body)
                assert first is not None, f"{kind}: the server closed without answering"
                response, content = first
                assert response.status_code == status, content
                headers = {k.lower(): v.lower() for k, v in response.headers}
                if headers.get(b"connection") == b"close":
                    return     # the client knows to use a new connection: nothing poisoned
                assert conn.our_state is h11.DONE, (
                    f"{kind}: the server answered before the client sent its body and did not "
                    "say 'Connection: close': the connection cannot be used again")
                conn.start_next_cycle()
                second = exchange(sock, conn, get("/health"), None)
                assert second is not None, (
                    f"{kind}: the connection was dropped after the error answer without "
                    "'Connection: close', so the client's next request on it failed")
                assert second[0].status_code == 200, second[1]

        await asyncio.to_thread(client)


async def test_an_httpx_keep_alive_client_goes_on_after_errors(
        make_engine: Callable[..., Any]) -> None:
    async with served(make_engine, event_keys=[KEY]) as port:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                     timeout=DEADLINE_S) as http:
            for _ in range(3):
                assert (await http.get("/v1/apps")).status_code == 500
                assert (await http.get("/health")).status_code == 200
                reply = await http.post(f"/e/{KEY}", content=b'{"name":"ka/go","data":{"x":NaN}}',
                                        headers={"content-type": "application/json"})
                assert reply.status_code == 400 and "data.x" in reply.json()["error"]
                assert (await http.post(f"/e/{KEY}", json={"name": "ka/go"})).status_code == 200
                big = json.dumps({"name": "ka/go", "data": {"x": "x" * MAX_EVENT_BYTES}})
                reply = await http.post(f"/e/{KEY}", content=big,
                                        headers={"content-type": "application/json"})
                assert reply.status_code == 413
                assert (await http.get("/health")).status_code == 200
