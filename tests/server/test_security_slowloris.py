"""Slow clients (issue 10, item 6): connections that never finish a request (or never send
anything) are closed, a connection cap makes room for new clients, and a normal client is
answered meanwhile.

The first test runs the real `stepwell serve` (the options as a user gives them) against 300
loopback sockets sending a request head one byte at a time (one in five sends nothing); the
others drive the connection
protocol in-process for the body deadline and keep-alive. Bounded: every wait has a deadline,
and the only pauses are the slow clients' own pacing between bytes. `bench/slowloris.py` is the
same attack at scale, for measuring.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import stepwell
from stepwell.server.app import create_app
from stepwell.server.connections import MAX_HEAD_BYTES, ConnectionLimits, server_config
from stepwell.service import Service

SLOW_SOCKETS = 300
BYTE_INTERVAL = 0.05           # the slow clients' pace: one byte per socket per interval
DEADLINE = 60.0                # generous: "answered", never "answered fast"
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000


async def slow_client(host: str, port: int, answers: list[bytes], *, idle: bool = False
                      ) -> None:
    """Send HEAD byte by byte (or, `idle`, nothing at all) until the server answers or closes;
    record its first bytes (b"" for a bare close)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for byte in HEAD:
            if idle:
                try:
                    answers.append(await asyncio.wait_for(reader.read(200), DEADLINE))
                except ConnectionError:
                    answers.append(b"")
                return
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(200), timeout=BYTE_INTERVAL)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            answers.append(data)
            return
        answers.append(b"finished the head: never cut")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until(check: Any, what: str, deadline: float = DEADLINE) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def stepwell_serve(tmp: Path, *args: str) -> AsyncIterator[str]:
    """`stepwell serve` on a free port; its URL, read from the banner."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stepwell", "serve", "--db", f"sqlite:///{tmp / 's.db'}",
        "--port", "0", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), DEADLINE)).decode()
            assert line, "stepwell serve exited before printing its URL"
            if "running at http://" in line:
                url = line.split("running at ", 1)[1].split()[0]
                break
        drain = asyncio.create_task(proc.stdout.read())   # keep its pipe from filling up
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), DEADLINE)
        with contextlib.suppress(NameError):
            await drain


async def test_slow_heads_are_cut_and_a_normal_client_is_answered(tmp_path: Path) -> None:
    async with stepwell_serve(tmp_path, "--header-timeout", "1", "--max-connections", "100"
                              ) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        answers: list[bytes] = []
        slow = [asyncio.create_task(slow_client(host, int(port), answers, idle=i % 5 == 0))
                for i in range(SLOW_SOCKETS)]   # one in five connects and sends nothing
        async with httpx.AsyncClient(timeout=5) as http:

            async def answered() -> bool:
                try:
                    reply = await http.get(f"{url}/health")
                except httpx.HTTPError:
                    return False
                return reply.status_code == 200

            # While the slow clients are still trickling (their heads take ~200 s to send).
            await until(answered, "a normal request to be answered during the attack")
            await until(lambda: _done(slow), "every slow connection to be closed")
            await until(answered, "a normal request after the attack")
        assert len(answers) == SLOW_SOCKETS
        statuses = sorted({a.split(b"\r\n", 1)[0].decode() for a in answers})
        assert set(statuses) <= {"HTTP/1.1 408 Request Timeout",
                                 "HTTP/1.1 503 Service Unavailable", ""}, statuses
        # Past the cap the longest-waiting connections made room; the rest ran out of time.
        assert any(a.startswith(b"HTTP/1.1 503") for a in answers)
        assert any(a.startswith(b"HTTP/1.1 408") for a in answers)


async def _done(tasks: list[asyncio.Task[None]]) -> bool:
    return all(t.done() for t in tasks) and not [t for t in tasks if t.exception()]


@contextlib.asynccontextmanager
async def in_process(tmp: Path, limits: ConnectionLimits) -> AsyncIterator[int]:
    async with stepwell.Engine(db=f"sqlite:///{tmp / 'p.db'}") as engine:
        sock = socket.create_server(("127.0.0.1", 0))
        server = uvicorn.Server(server_config(create_app(Service(engine)), limits,
                                              log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            await task
            sock.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), DEADLINE)


async def test_a_body_that_never_ends_is_cut(tmp_path: Path) -> None:
    async with in_process(tmp_path, ConnectionLimits(header_timeout=5, body_timeout=1)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /e/key HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":")
        await writer.drain()
        answer = await read_until_closed(reader)   # nothing more is sent: the server must end it
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert b"request body did not arrive" in answer
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200


async def test_a_keep_alive_connection_cannot_trickle_its_next_request(tmp_path: Path) -> None:
    async with in_process(tmp_path, ConnectionLimits(header_timeout=1)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"}"), DEADLINE)
        assert first.startswith(b"HTTP/1.1 200")
        answer = b""
        for byte in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 2000:
            writer.write(bytes([byte]))      # each byte resets uvicorn's keep-alive timer
            try:
                answer = await asyncio.wait_for(reader.read(200), timeout=BYTE_INTERVAL)
            except TimeoutError:
                continue
            break
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer


async def test_a_request_head_over_the_limit_is_refused_with_431(tmp_path: Path) -> None:
    """httptools has no limit on a request head: the protocol keeps h11's (MAX_HEAD_BYTES), so
    a client cannot make the server buffer headers without end, however fast it sends."""
    async with in_process(tmp_path, ConnectionLimits()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: "
                     + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await read_until_closed(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), answer[:200]
        assert f"over {MAX_HEAD_BYTES} bytes".encode() in answer
        # A head just under the limit, on a new connection, is answered as usual.
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{port}/health",
                                   headers={"x-big": "a" * (MAX_HEAD_BYTES - 200)})
            assert reply.status_code == 200


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    """Two requests in one write (HTTP/1.1 pipelining): both answered, in order, and the
    connection then waits for a head again (the guard's phases follow the parser)."""
    async with in_process(tmp_path, ConnectionLimits(header_timeout=1)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        event = b'{"name": "pipe/one"}'
        post = (b"POST /e/key HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(event)).encode() + b"\r\n\r\n" + event)
        writer.write(post + b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        answer = await read_until_closed(reader)   # closed by the header deadline, 1 s later
        writer.close()
        first, _, rest = answer.partition(b"HTTP/1.1 200")[2].partition(b"HTTP/1.1 ")
        assert b'"ids"' in first, answer
        assert rest.startswith(b"200"), answer
        assert b"HTTP/1.1 408" in answer                  # then the idle connection timed out
