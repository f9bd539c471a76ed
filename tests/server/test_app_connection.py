"""The lean HTTP/1.1 connection the engine calls SDK apps with (`runtime.appconn`, issue 13):
against a raw asyncio server that answers exactly what each test scripts, so every framing
and failure the connection claims to handle is exercised on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from stepwell.runtime import appconn
from stepwell.runtime.appconn import AppConnection
from stepwell.runtime.sdkclient import AppClients

Answer = Callable[[bytes], bytes | None]      # request head + body -> raw response (None: hang)


class Scripted:
    """A server reading one request at a time (head, then content-length bytes) and writing
    `answer(request)`; records each request and the peer port it came on."""

    def __init__(self, answer: Answer, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.peers: list[int] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                self.peers.append(writer.get_extra_info("peername")[1])
                reply = self.answer(request)
                if reply is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    servers: list[asyncio.Server] = []
    scripts: list[Scripted] = []

    async def start(answer: Answer, close_after: bool = False) -> Scripted:
        scripted = Scripted(answer, close_after)
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        servers.append(server)
        scripts.append(scripted)
        scripted.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return scripted

    yield start
    for server in servers:
        server.close()
    for scripted in scripts:
        for writer in scripted.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\nx-inngest-sdk: js:v4\r\n"
            f"{extra}\r\n").encode() + body


def connection(app: Scripted) -> AppConnection:
    return AppConnection(app.url, ssl.create_default_context())


async def test_one_connection_is_reused_and_the_request_is_as_sent(serve: Any) -> None:
    app = await serve(lambda request: ok(b'{"ok":true}'))
    conn = connection(app)
    for n in range(3):
        reply = await conn.post(f"{app.url}/api/inngest?fnId=f%20g&stepId=s",
                                content=b'{"n":%d}' % n, timeout=5,
                                headers={"content-type": "application/json", "x-run-id": "r"})
        assert reply.status_code == 200 and json.loads(reply.content) == {"ok": True}
        assert reply.headers["x-inngest-sdk"] == "js:v4"
    assert len(set(app.peers)) == 1
    head, _, body = app.requests[2].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/inngest?fnId=f%20g&stepId=s HTTP/1.1\r\n")
    assert b"\r\ncontent-type: application/json" in head and b"\r\nx-run-id: r" in head
    assert b"\r\ncontent-length: 7" in head and body == b'{"n":2}'
    await conn.aclose()


async def test_chunked_and_gzip_bodies_are_read_whole(serve: Any) -> None:
    packed = gzip.compress(b'{"big":"' + b"x" * 200_000 + b'"}')
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
    answers = iter([chunked, ok(packed, "content-encoding: gzip")])
    app = await serve(lambda request: next(answers))
    conn = connection(app)
    first = await conn.post(app.url, content=b"{}", headers={}, timeout=5)
    assert json.loads(first.content) == {"a": 1}
    reply = await conn.post(app.url, content=b"{}", headers={}, timeout=5)
    assert len(json.loads(reply.content)["big"]) == 200_000
    assert "content-encoding" not in reply.headers      # decoded once, not again by httpx
    assert len(set(app.peers)) == 1
    await conn.aclose()


async def test_a_connection_the_app_closed_is_replaced_before_the_next_post(serve: Any) -> None:
    app = await serve(lambda request: ok(b"{}"))
    conn = connection(app)
    await conn.post(app.url, content=b"{}", headers={}, timeout=5)
    for writer in app.writers:                          # the app's keep-alive timeout
        writer.close()
    await asyncio.sleep(0)
    deadline = asyncio.get_running_loop().time() + 5
    while conn._writer is not None and not conn._stale():
        assert asyncio.get_running_loop().time() < deadline, "the close was never seen"
        await asyncio.sleep(0.01)
    reply = await conn.post(app.url, content=b"{}", headers={}, timeout=5)
    assert reply.status_code == 200
    assert len(app.requests) == 2 and len(set(app.peers)) == 2   # sent once, on a new one
    await conn.aclose()


async def test_connection_close_and_bodies_ending_with_the_connection(serve: Any) -> None:
    closing = b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"end":1}'
    app = await serve(lambda request: closing, close_after=True)
    conn = connection(app)
    for _ in range(2):
        reply = await conn.post(app.url, content=b"{}", headers={}, timeout=5)
        assert json.loads(reply.content) == {"end": 1}
        assert conn._writer is None                       # closed, as the app asked
    assert len(set(app.peers)) == 2
    await conn.aclose()


async def test_failures_are_httpx_errors(serve: Any) -> None:
    app = await serve(lambda request: None)                # never answers
    conn = connection(app)
    with pytest.raises(httpx.ReadTimeout):
        await conn.post(app.url, content=b"{}", headers={}, timeout=0.2)
    assert conn._writer is None                           # a half-used connection is dropped
    garbage = await serve(lambda request: b"SMTP ready\r\n\r\n")
    with pytest.raises(httpx.RemoteProtocolError):
        await connection(garbage).post(garbage.url, content=b"{}", headers={}, timeout=5)
    cut = await serve(lambda request: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{",
                      close_after=True)
    with pytest.raises(httpx.RemoteProtocolError, match="before its response was complete"):
        await connection(cut).post(cut.url, content=b"{}", headers={}, timeout=5)
    closed = AppConnection("http://127.0.0.1:1", ssl.create_default_context())
    with pytest.raises(httpx.ConnectError):
        await closed.post("http://127.0.0.1:1/", content=b"{}", headers={}, timeout=5)


async def test_a_header_or_url_cannot_carry_a_line_break(serve: Any) -> None:
    app = await serve(lambda request: ok(b"{}"))
    conn = connection(app)
    for headers in ({"x-inngest-step-id": "a\r\nx-evil: 1"}, {"x-run-id": "a\x00"}):
        with pytest.raises(httpx.LocalProtocolError):
            await conn.post(app.url, content=b"{}", headers=headers, timeout=5)
    assert app.requests == []                          # nothing was sent
    # In the URL, urlsplit drops CR and LF (as Python does since 3.9.5): no header either.
    await conn.post(f"{app.url}/?stepId=a\r\nx-evil:1", content=b"{}", headers={}, timeout=5)
    assert b"\r\nx-evil" not in app.requests[0]
    await conn.aclose()


async def test_with_a_proxy_configured_the_slots_are_httpx_clients(
        serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await serve(lambda request: ok(b"{}"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")   # not for this http:// app
    clients = AppClients(limit=1)
    try:
        await clients.post(app.url, content=b"{}", headers={}, timeout=5)
        [origin] = clients._origins.values()
        assert isinstance(origin.made[0], httpx.AsyncClient)
    finally:
        await clients.aclose()


@pytest.mark.parametrize(("headers", "body"), [
    ([("Content-Type", "application/json"), ("X-Inngest-SDK", "js:v4")], b'{"a": 1}'),
    ([("content-type", "text/plain; charset=latin-1")], "caf\u00e9".encode("latin-1")),
    ([("content-type", 'text/plain; charset="utf-8"')], "\u65e5".encode()),
    ([("content-type", "text/plain; charset=no-such-codec")], b"ok \xff"),
    ([("content-type", "application/json")], b"bad \xff utf-8"),
    ([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Retry-After", "5")], b""),
])
def test_a_reply_reads_as_the_httpx_response_it_replaces(
        headers: list[tuple[str, str]], body: bytes) -> None:
    """`AppResponse` (what a connection hands back) against `httpx.Response` built from the
    same status, headers and body: the same text, and the same header values by any case."""
    ours = appconn.AppResponse(200, appconn.ReplyHeaders(headers), body)
    theirs = httpx.Response(200, headers=headers, content=body)
    assert ours.text == theirs.text
    assert appconn.reply_text(ours) == appconn.reply_text(theirs)
    for name, _ in headers:
        for spelled in (name, name.lower(), name.upper()):
            assert ours.headers.get(spelled) == theirs.headers.get(spelled)
            assert ours.headers[spelled] == theirs.headers[spelled]
            assert spelled in ours.headers
    assert "x-absent" not in ours.headers and ours.headers.get("x-absent", "d") == "d"


def test_a_streamed_reply_is_unwrapped_or_refused() -> None:
    outer = appconn.AppResponse(201, appconn.ReplyHeaders([("x-inngest-sdk", "py:v0.5")]), b"")
    inner = appconn.unwrap_streamed(
        outer, '  \n {"status": 206, "headers": {"X-Inngest-No-Retry": "true"}, "body": "[]"}')
    assert (inner.status_code, inner.content) == (206, b"[]")
    assert inner.headers["x-inngest-no-retry"] == "true"
    assert inner.headers["x-inngest-sdk"] == "py:v0.5"
    for text in ('{"status": 200, "headers": {"retry-after": 5}}', '{"headers": {}}', "nope",
                 '{"status": "x"}'):
        with pytest.raises((ValueError, KeyError, TypeError)):
            appconn.unwrap_streamed(outer, text)
