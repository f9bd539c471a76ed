"""`POST /e/{key}` answers exactly as the router did, on the fast path (server/fastpath.py).

Each request is sent twice to the same app: once as a server delivers it (`StepwellApp`, which
takes the event route before Starlette's stack) and once forced through Starlette's middleware
stack and router (`Starlette.__call__`, the path every request took before). Status, headers
and body must be the same (event ids are compared by count and shape: each send makes new
ones); the scope shows which path ran (only the router records the endpoint it matched).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette

import stepwell
from stepwell.core.models import MAX_EVENT_BYTES
from stepwell.core.traceparent import TRACEPARENT
from stepwell.server.app import MAX_EVENT_REQUEST_BYTES, create_app
from stepwell.service import EventBatch, Service

KEY = "the-event-key-0123456789"
JSON = [(b"host", b"localhost"), (b"content-type", b"application/json")]
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
Reply = tuple[int, list[tuple[bytes, bytes]], Any]


async def call(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
               *, method: str = "POST", query: bytes = b"", root_path: str = "",
               scope_out: dict[str, Any] | None = None) -> Reply:
    """One request through the ASGI app; (status, headers, JSON body). `content-length` is
    the body's unless the headers give one."""
    headers = list(JSON if headers is None else headers)
    if not any(name == b"content-length" for name, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": root_path + path,
             "raw_path": (root_path + path).encode(), "root_path": root_path,
             "query_string": query, "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("localhost", 80)}
    chunks = [body]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(), "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if scope_out is not None:
        scope_out.update(scope)
    start = sent[0]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], list(start["headers"]), json.loads(content)


def router_path(app: Starlette) -> Callable[..., Any]:
    """The app as it answered before the fast path: Starlette's stack and router."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        await Starlette.__call__(app, scope, receive, send)

    return asgi


def shape(reply: Reply) -> Reply:
    """The reply with each event id replaced by its length (ids are new on every send)."""
    status, headers, body = reply
    if isinstance(body, dict) and isinstance(body.get("ids"), list):
        body = {**body, "ids": [len(i) for i in body["ids"]]}
    return status, headers, body


def events(*items: dict[str, Any]) -> bytes:
    return json.dumps(list(items)).encode()


@asynccontextmanager
async def apps(make_engine: Callable[..., Any], service: type[Service] = Service,
               **options: Any) -> AsyncIterator[tuple[Starlette, stepwell.Engine]]:
    async with make_engine(stepwell.App("fast")) as engine:
        yield create_app(service(engine), **options), engine


CASES: list[tuple[str, str, bytes, list[tuple[bytes, bytes]] | None, bytes]] = [
    ("one event", "/e/dev", b'{"name": "a/one", "data": {"n": 1}}', None, b""),
    ("a batch", "/e/dev", events(*({"name": "a/b", "data": {"i": i}} for i in range(100))),
     None, b""),
    ("an empty batch", "/e/dev", b"[]", None, b""),
    ("bad JSON", "/e/dev", b'{"name": ', None, b""),
    ("an empty body", "/e/dev", b"  ", None, b""),
    ("not UTF-8", "/e/dev", b'{"name": "\xff"}', None, b""),
    ("no name", "/e/dev", b'{"data": {}}', None, b""),
    ("a bad event in a batch", "/e/dev", events({"name": "a/ok"}, {"data": 1}), None, b""),
    ("bad JSON after an event", "/e/dev", b'[{"name": "a/ok"}, {"name": ', None, b""),
    ("an event over 3 MiB", "/e/dev",
     json.dumps({"name": "a/big", "data": {"s": "x" * MAX_EVENT_BYTES}}).encode(), None, b""),
    ("a body declared too large", "/e/dev", b'{"name": "a"}',
     [*JSON, (b"content-length", str(MAX_EVENT_REQUEST_BYTES + 1).encode())], b""),
    ("text/plain", "/e/dev", b'{"name": "a"}',
     [(b"host", b"localhost"), (b"content-type", b"text/plain")], b""),
    ("a foreign host", "/e/dev", b'{"name": "a"}',
     [(b"host", b"evil.example"), (b"content-type", b"application/json")], b""),
    ("no host", "/e/dev", b'{"name": "a"}', [(b"content-type", b"application/json")], b""),
    ("a cross-site write", "/e/dev", b'{"name": "a"}',
     [*JSON, (b"sec-fetch-site", b"cross-site")], b""),
    ("NUL in the query", "/e/dev", b'{"name": "a"}', None, b"x=%00"),
    ("NUL in the key", "/e/d\x00v", b'{"name": "a"}', None, b""),
]


@pytest.mark.parametrize(("what", "path", "body", "headers", "query"), CASES,
                         ids=[c[0] for c in CASES])
async def test_the_fast_path_answers_as_the_router(make_engine: Any, what: str, path: str,
                                                   body: bytes,
                                                   headers: list[tuple[bytes, bytes]] | None,
                                                   query: bytes) -> None:
    async with apps(make_engine) as (app, _engine):
        fast_scope: dict[str, Any] = {}
        routed_scope: dict[str, Any] = {}
        fast = await call(app, path, body, headers, query=query, scope_out=fast_scope)
        routed = await call(router_path(app), path, body, headers, query=query,
                            scope_out=routed_scope)
    assert shape(fast) == shape(routed)
    assert "endpoint" not in fast_scope        # the router never saw the fast one
    if "ids" in fast[2]:                       # the handler answered (not a guard) ...
        assert "endpoint" in routed_scope      # ... and the router did route the other


async def test_each_refusal_names_what_is_wrong(make_engine: Any) -> None:
    """The fast path's answers themselves (the parity test shows they are the router's)."""
    async with apps(make_engine) as (app, _engine):
        status, _, body = await call(app, "/e/dev", b'{"name": ')
        assert (status, body["ids"]) == (400, []) and "not valid JSON" in body["error"]
        status, headers, body = await call(app, "/e/dev", b"{}", [
            *JSON, (b"content-length", str(MAX_EVENT_REQUEST_BYTES + 1).encode())])
        assert status == 413 and str(MAX_EVENT_REQUEST_BYTES + 1) in body["error"]
        assert (b"connection", b"close") in headers
        status, _, body = await call(app, "/e/dev", events({"name": "a/ok"}, {"data": 1}))
        assert status == 400 and len(body["ids"]) == 1 and "event [1]" in body["error"]
        assert "1 event" in body["error"]


async def test_a_batch_is_stored_in_order(make_engine: Any) -> None:
    async with apps(make_engine) as (app, engine):
        status, _, body = await call(app, "/e/dev", events(
            *({"name": "a/batch", "data": {"i": i}} for i in range(50))))
        assert (status, body["status"], len(body["ids"])) == (200, 200, 50)
        stored = {e.id: e.data["i"] for e, _ in await engine.events("a/batch", 100)}
        assert [stored[i] for i in body["ids"]] == list(range(50))


async def test_event_keys_are_checked(make_engine: Any) -> None:
    async with apps(make_engine, event_keys=[KEY]) as (app, engine):
        status, _, body = await call(app, "/e/not-the-key", b'{"name": "a/k"}')
        assert status == 401 and "event key not found" in body["error"]
        assert await engine.events("a/k", 10) == []
        status, _, body = await call(app, f"/e/{KEY}", b'{"name": "a/k"}')
        assert status == 200 and len(body["ids"]) == 1
        wrong = await call(app, "/e/not-the-key", b'{"name": "a/k"}')
        assert shape(wrong) == shape(await call(router_path(app), "/e/not-the-key",
                                                b'{"name": "a/k"}'))


async def test_the_traceparent_header_joins_the_events_to_the_trace(make_engine: Any) -> None:
    async with apps(make_engine) as (app, engine):
        status, _, body = await call(app, "/e/dev", events({"name": "a/t"}, {"name": "a/t"}),
                                     [*JSON, (b"traceparent", TRACE.encode())])
        assert status == 200
        stored = {e.id: e for e, _ in await engine.events("a/t", 10)}
        assert [stored[i].user[TRACEPARENT] for i in body["ids"]] == [TRACE, TRACE]


class BuggyService(Service):
    async def send_event_batch(self, batch: EventBatch, *, seed: str | None = None,
                               traceparent: str | None = None) -> list[str]:
        raise RuntimeError("a bug")


async def test_a_bug_is_a_500_that_closes_the_connection_and_is_raised(make_engine: Any) -> None:
    """As Starlette's error middleware does: answered, then raised for the server to log."""
    async with apps(make_engine, BuggyService) as (app, _engine):
        replies = []
        for asgi in (app, router_path(app)):
            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(message)

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b'{"name": "a"}', "more_body": False}

            scope = {"type": "http", "method": "POST", "path": "/e/dev", "root_path": "",
                     "query_string": b"", "headers": [*JSON, (b"content-length", b"13")],
                     "scheme": "http", "server": ("localhost", 80), "http_version": "1.1"}
            with pytest.raises(RuntimeError, match="a bug"):
                await asgi(scope, receive, send)
            replies.append((sent[0]["status"], sent[0]["headers"], sent[1]["body"]))
    assert replies[0] == replies[1]
    status, headers, content = replies[0]
    assert status == 500 and (b"connection", b"close") in headers
    assert json.loads(content)["error"] == "internal error: RuntimeError: a bug"


async def test_other_methods_paths_and_mounts_go_through_starlette(make_engine: Any) -> None:
    async with apps(make_engine) as (app, engine):
        status, _, body = await call(app, "/e/dev", b"", method="GET")
        assert status == 405 and "GET is not allowed" in body["error"]
        status, _, body = await call(app, "/e/a/b", b'{"name": "a"}')
        assert status == 404 and "no route POST /e/a/b" in body["error"]
        scope: dict[str, Any] = {}
        status, _, body = await call(app, "/e/dev", b'{"name": "a/m"}', root_path="/sw",
                                     scope_out=scope)
        assert status == 200 and len(body["ids"]) == 1 and "endpoint" in scope
        assert len(await engine.events("a/m", 10)) == 1
