"""The HTTP client the engine calls SDK apps with: bounded, fair and reused, per app.

httpx's connection pool does bookkeeping over every waiting request and every connection on
each request (`_assign_requests_to_connections`): with a thousand runs calling one app at once,
the runs queue *inside* the pool and each request costs milliseconds of CPU before it is even
sent (measured: one shared pool answers ~65 trivial POSTs/s at 64 concurrent requests, against
~700/s for one). So the runs queue here instead, in order: each app origin (scheme, host, port)
gets `limit` slots, each holding one keep-alive connection (`appconn.AppConnection`: a
lean HTTP/1.1 client, httpx's per-request cost was most of the server's CPU); a call waits
(FIFO, so no run is starved) for a free slot, and the pool it then uses has nothing else in it.

A run also holds a *run slot* of its app while it executes (`run_slot`, again `limit` per
origin, FIFO): a run that has started keeps going call after call and finishes before runs
that have not started take its place, instead of queueing behind a thousand first calls at
every step (same throughput, far lower latency for a burst). Connection slots are only ever
held for one request, so a run waiting for one (its parallel steps) never deadlocks others.

Every connection is opened with TCP_NODELAY (asyncio sets it too; it is explicit here because a
request written as headers then body must never wait for the peer's delayed ACK: the ~40 ms
Nagle stall). Slots are created on first use and closed with the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from stepwell.runtime.appconn import AppConnection, Reply, proxy_configured

DEFAULT_LIMIT = 32          # concurrent requests per app origin (`--sdk-concurrency`)
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every slot: building one loads the CA bundle (tens of ms)."""
    return httpx.create_ssl_context()


def nodelay_client(*, timeout: float, connections: int = 1) -> httpx.AsyncClient:
    """An httpx client whose connections all have TCP_NODELAY and are kept alive."""
    transport = httpx.AsyncHTTPTransport(
        verify=_tls(), socket_options=NODELAY,
        limits=httpx.Limits(max_connections=connections,
                            max_keepalive_connections=connections, keepalive_expiry=60.0))
    return httpx.AsyncClient(transport=transport, timeout=timeout)


class _Fifo:
    """A semaphore that serves waiters strictly in arrival order (asyncio's lets a newcomer
    take a slot freed while the oldest waiter has not run yet)."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()                       # handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Slot(Protocol):
    """What a connection slot holds: an `AppConnection`, or an httpx client (with a proxy)."""

    async def post(self, url: str, *, content: bytes, headers: dict[str, str],
                   timeout: float) -> Reply: ...

    async def aclose(self) -> None: ...


class _Origin:
    """The slots of one app origin: idle connections (made on demand, up to `limit`) and the
    calls waiting for one, served strictly in arrival order (a freed slot is handed to the
    oldest waiter directly, so a newcomer never overtakes it); and its run slots."""

    def __init__(self, origin: str, limit: int, timeout: float) -> None:
        self.origin = origin
        self.runs = _Fifo(limit)
        self.idle: list[_Slot] = []
        self.made: list[_Slot] = []
        self.waiters: deque[asyncio.Future[_Slot]] = deque()
        self.limit = limit
        self.timeout = timeout

    def _new_slot(self) -> _Slot:
        if proxy_configured():      # httpx knows proxies; AppConnection does not
            return nodelay_client(timeout=self.timeout)
        return AppConnection(self.origin, _tls())

    async def acquire(self) -> _Slot:
        if self.idle:
            return self.idle.pop()
        if len(self.made) < self.limit:
            slot = self._new_slot()
            self.made.append(slot)
            return slot
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())        # handed over just as we were cancelled
            raise

    def release(self, slot: _Slot) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self.idle.append(slot)


class AppClients:
    """`post()` to SDK apps with at most `limit` requests in flight per app origin."""

    def __init__(self, *, limit: int = DEFAULT_LIMIT, timeout: float = 300.0) -> None:
        if limit < 1:
            raise ValueError(f"the SDK concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.timeout = timeout
        self._origins: dict[str, _Origin] = {}

    def _origin(self, url: str) -> _Origin:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}"
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(key, self.limit, self.timeout)
        return origin

    @contextlib.asynccontextmanager
    async def run_slot(self, url: str) -> AsyncIterator[None]:
        """Held by a run while it executes against the app at `url` (see the module doc)."""
        runs = self._origin(url).runs
        await runs.acquire()
        try:
            yield
        finally:
            runs.release()

    async def post(self, url: str, *, content: bytes, headers: dict[str, str],
                   timeout: float) -> Reply:
        origin = self._origin(url)
        client = await origin.acquire()
        try:
            return await client.post(url, content=content, headers=headers, timeout=timeout)
        finally:
            origin.release(client)

    def in_use(self, url: str) -> int:
        """Slots of `url`'s origin busy now (for tests and metrics)."""
        origin = self._origins.get(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}")
        return 0 if origin is None else len(origin.made) - len(origin.idle)

    async def aclose(self) -> None:
        for origin in self._origins.values():
            for client in origin.made:
                await client.aclose()
        self._origins.clear()
