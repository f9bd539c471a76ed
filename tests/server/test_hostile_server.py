"""A bounded hostile-input run against a real `stepwell serve` (issue 10's script).

`stepwell serve` runs as its own process on a loopback port (SQLite and Postgres). One client
throws at it everything issue 10 and 11 found (poison JSON on every JSON route, deep nesting,
huge and non-finite numbers, NUL and odd strings in every path and query parameter, oversize
events and requests, broken batches, raw protocol garbage), over keep-alive connections, then
checks that nothing answered 5xx, nothing crashed in the server's log, and the server still
works normally: it takes an event and shows it.

Bounded: a fixed list of requests (about 450), each with a timeout, the whole run
with a deadline; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hostile import HOSTILE_BODIES, HOSTILE_STRINGS, JSON_ROUTES, POISON, nested, with_poison

START_DEADLINE_S = 30.0
RUN_DEADLINE_S = 240.0
REQUEST_TIMEOUT_S = 20.0
URL_RE = re.compile(rb"http://127\.0\.0\.1:(\d+)")

# Every GET route with its parameters, for the hostile strings (`{}` is a path parameter).
GET_ROUTES = ["/v1/runs/{}", "/v1/runs/{}/events", "/v1/events/{}", "/v1/events/{}/runs",
              "/v0/runs/{}/batch", "/v0/runs/{}/actions", "/dashboard/{}",
              "/dashboard/assets/{}"]
QUERIES = [("/v1/events", ("name", "limit")),
           ("/v1/runs", ("function_id", "status", "event_id", "limit", "outputs"))]
# A registration of a function whose app is not running: enough for the routes that look
# functions up (cancellations, /v1/functions) to have one.
REGISTRATION = {"url": "http://127.0.0.1:9/api/inngest", "appName": "shop", "framework": "x",
                "sdk": "py:v0.5.0", "v": "0.1", "deployType": "ping", "functions": [{
                    "id": "shop-greet", "name": "greet",
                    "triggers": [{"event": "shop/greet"}],
                    "steps": {"step": {"id": "step", "name": "step", "runtime": {
                        "type": "http",
                        "url": "http://127.0.0.1:9/api/inngest?fnId=shop-greet&step=step"}}}}]}


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """`stepwell serve` on a free loopback port; yields its URL and its output so far."""
    cmd = [sys.executable, "-m", "stepwell", "serve", "--db", db_url, "--host", "127.0.0.1",
           "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output: list[bytes] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        url = None
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None, b"".join(output)
            found = [m for m in URL_RE.finditer(b"".join(output)) if m.group(1) != b"0"]
            if found:
                url = found[0].group(0).decode()
            else:
                time.sleep(0.05)
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, b"".join(output)
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, output
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def raw_exchange(url: str, payload: bytes) -> bytes:
    """Send raw bytes on a fresh connection; what came back before the server closed it
    (or the read timed out)."""
    host, port = url.removeprefix("http://").split(":")
    with closing(socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_S)) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_a_real_server_survives_hostile_input(server: tuple[str, list[bytes]]) -> None:
    url, output = server
    started = time.monotonic()
    answers: list[tuple[str, int]] = []
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

        def hit(method: str, path: str, **kwargs: object) -> httpx.Response:
            assert time.monotonic() - started < RUN_DEADLINE_S, "the hostile run overran"
            reply = http.request(method, path, **kwargs)  # type: ignore[arg-type]
            answers.append((f"{method} {path[:80]}", reply.status_code))
            return reply

        assert hit("POST", "/fn/register", json=REGISTRATION).status_code == 200
        good = hit("POST", "/e/dev", json={"name": "shop/greet", "data": {"n": 1}}).json()
        run_ids = []
        deadline = time.monotonic() + START_DEADLINE_S
        while not run_ids and time.monotonic() < deadline:
            run_ids = [r["run_id"] for r in hit("GET", "/v1/runs").json()["data"]]
        run_id = run_ids[0] if run_ids else "none"
        json_headers = {"content-type": "application/json"}

        for route, template in JSON_ROUTES.items():
            method, path = route.split(" ")
            path = path.replace("RUN", run_id)
            for poison in POISON:
                hit(method, path, content=with_poison(template, poison), headers=json_headers)
            for body in HOSTILE_BODIES:
                hit(method, path, content=body, headers=json_headers)
            hit(method, path, content=template.encode().replace(b"DATA", nested(5000)),
                headers=json_headers)
        for value in HOSTILE_STRINGS:
            for route in GET_ROUTES:
                hit("GET", route.format(quote(value, safe="")))
            for path, names in QUERIES:
                hit("GET", path, params={n: value for n in names})
            for method, path in (("POST", "/v1/runs/{}/cancel"), ("DELETE", "/v1/runs/{}"),
                                 ("POST", "/v1/runs/{}/replay"), ("POST", "/e/{}")):
                hit(method, path.format(quote(value, safe="")), json={"name": "shop/x"})
        big_event = json.dumps({"name": "shop/big", "data": {"b": "x" * (3 * 1024 * 1024)}})
        assert hit("POST", "/e/dev", content=big_event, headers=json_headers).status_code == 413
        eight = [{"name": "shop/big", "data": {"b": "x" * (1024 * 1024)}}] * 8
        assert hit("POST", "/e/dev", json=eight).status_code == 200

        # Raw protocol abuse, each on a connection of its own.
        post = b"POST /e/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        for payload in (b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
                        b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                        post + b"Content-Length: 99999999999\r\n\r\n",
                        post + b"Content-Length: -1\r\n\r\n",
                        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
            head = raw_exchange(url, payload)
            status = re.match(rb"HTTP/1\.1 (\d{3})", head)
            if status is not None:
                answers.append((repr(payload[:40]), int(status.group(1))))

        failures = [a for a in answers if a[1] >= 500]
        assert failures == [], failures
        assert len(answers) > 400, f"only {len(answers)} answers: the run did not happen"

        # Afterwards the server works normally, on the same keep-alive client.
        assert hit("GET", "/health").status_code == 200
        sent = hit("POST", "/e/dev", json={"name": "shop/after", "data": {"ok": True}})
        assert sent.status_code == 200, sent.text
        [after_id] = sent.json()["ids"]
        listed = hit("GET", "/v1/events", params={"name": "shop/after"}).json()["data"]
        assert [e["id"] for e in listed] == [after_id]
        assert hit("GET", f"/v1/events/{good['ids'][0]}").status_code == 200
        assert hit("GET", "/v1/runs").status_code == 200
    log = b"".join(output)
    assert b"Traceback" not in log and b"Exception in ASGI" not in log, log[-4000:]
