"""The official SDKs' send-retry path (issue 11.3): `x-inngest-event-id-seed`.

An SDK app (Python `inngest` under FastAPI, TypeScript v3 and v4) talks to `stepwell serve`
through a small loopback proxy. The proxy forwards everything, except that it drops the answer
to the first `POST /e/...` after the server has committed the events: the connection is closed
without a response, as a network failure or a timeout would leave it. The SDK then sends the
same request again, with the same seed header. The events must be stored once and the function
they trigger must run once (its step's ledger entry appears once).

Without the seed (before stepwell derived event ids from it) the retry stored a second event
and the triggered function ran twice.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
import pytest
from sdk_harness import (
    DB_BACKENDS,
    TS_VERSIONS,
    AppSpec,
    Process,
    fresh_database,
    python_app_spec,
    start_app,
    start_serve,
    typescript_app_spec,
    unique,
    wait_for,
)

HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"host",
                         b"content-length"})


@dataclass
class DroppingProxy:
    """A loopback HTTP/1.1 proxy to `upstream` that answers nothing to the first event send.

    One thread per client connection; requests on a connection are forwarded in order with
    httpx. `dropped` lists the sends whose answers it threw away (with the server's answer),
    `sends` every event send it forwarded (with the seed header each carried)."""

    upstream: str
    sock: socket.socket = field(default_factory=socket.socket)
    dropped: list[bytes] = field(default_factory=list)
    sends: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def start(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with closing(conn), httpx.Client(timeout=30) as client:
            conn.settimeout(60)
            h = h11.Connection(h11.SERVER)
            while True:
                request, body = self._read_request(conn, h)
                if request is None:
                    return
                headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_HEADERS]
                answer = client.request(request.method.decode(),
                                        self.upstream + request.target.decode(),
                                        headers=headers, content=body)
                if request.method == b"POST" and request.target.startswith(b"/e/"):
                    seed = dict(request.headers).get(b"x-inngest-event-id-seed", b"")
                    with self.lock:
                        self.sends.append(seed.decode())
                        drop = not self.dropped
                        if drop:
                            self.dropped.append(answer.content)
                    if drop:        # committed upstream; the client never hears of it
                        with suppress(OSError):
                            conn.shutdown(socket.SHUT_RDWR)
                        return
                out = [(k, v) for k, v in answer.headers.raw if k.lower() not in HOP_HEADERS]
                out.append((b"content-length", str(len(answer.content)).encode()))
                conn.sendall(h.send(h11.Response(status_code=answer.status_code, headers=out)))
                conn.sendall(h.send(h11.Data(data=answer.content)))
                conn.sendall(h.send(h11.EndOfMessage()))
                if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                    return
                h.start_next_cycle()

    @staticmethod
    def _read_request(conn: socket.socket, h: h11.Connection
                      ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return None, b""
                h.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            else:                               # ConnectionClosed, or a broken request
                return None, b""


@pytest.fixture(params=["python", *TS_VERSIONS])
def spec(request: pytest.FixtureRequest) -> AppSpec:
    return python_app_spec() if request.param == "python" else typescript_app_spec(
        str(request.param))


@pytest.fixture(params=DB_BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path: Path, spec: AppSpec
           ) -> Iterator[tuple[Process, Process, DroppingProxy]]:
    with fresh_database(str(request.param), tmp_path) as db_url:
        server = start_serve(db_url, tmp_path)
        proxy = DroppingProxy(server.url)
        proxy.start()
        app: Process | None = None
        try:
            app = start_app(spec, proxy.url)     # the app's API and event API: the proxy
            reply = httpx.post(f"{server.url}/v1/apps/sync",
                               json={"url": f"{app.url}/api/inngest"}, timeout=30)
            assert reply.status_code == 200, (reply.text, server.tail(), app.tail())
            yield server, app, proxy
        finally:
            proxy.stop()
            try:
                if app is not None:
                    app.stop()
            finally:
                server.stop()


def test_a_send_whose_answer_was_lost_stores_once_and_runs_once(
        served: tuple[Process, Process, DroppingProxy]) -> None:
    with httpx.Client(timeout=10) as http:
        check_send_retry(http, *served)


def check_send_retry(http: httpx.Client, server: Process, app: Process,
                     proxy: DroppingProxy) -> None:
    email = f"{unique('retry')}@example.com"
    # The SDK function user-signup sends app/email.requested with step.send_event /
    # step.sendEvent: that send goes through the proxy, which drops its first answer.
    reply = http.post(f"{server.url}/e/key", json={"name": "app/user.signup",
                                                   "data": {"email": email}})
    assert reply.status_code == 200, reply.text

    def delivered() -> list[dict[str, object]]:
        entries = http.get(f"{app.url}/_test/ledger").json()
        return [e for e in entries if e["kind"] == "deliver-email" and e["key"] == email]

    def signup_done() -> bool:
        runs = http.get(f"{server.url}/v1/runs", params={"limit": 1000}).json()["data"]
        return any(r["status"] == "Completed" and r["function_id"].endswith("user-signup")
                   for r in runs) and bool(delivered())

    context = lambda: f"{server.tail()}\n{app.tail()}"  # noqa: E731
    wait_for(signup_done, "the signup run to finish and the email to be delivered",
             context=context)
    assert len(proxy.dropped) == 1, "the proxy never dropped an answer: nothing was tested"
    assert len(proxy.sends) >= 2 and len(set(proxy.sends)) == 1 and proxy.sends[0], (
        f"the SDK did not retry with one seed: {proxy.sends}")
    events = http.get(f"{server.url}/v1/events",
                      params={"name": "app/email.requested", "limit": 100}).json()["data"]
    mine = [e for e in events if e["data"].get("to") == email]
    assert len(mine) == 1, f"the retried send stored {len(mine)} events"
    # Let any second run show itself: the send-email runs of this event, once all are done.
    runs = wait_for(lambda: [r for r in http.get(
        f"{server.url}/v1/events/{mine[0]['id']}/runs").json()["data"]
        if r["status"] == "Completed"], "the send-email run", context=context)
    assert len(runs) == 1
    assert len(delivered()) == 1, f"the email was delivered {len(delivered())} times"
