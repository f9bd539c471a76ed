"""The server's network surface, at the HTTP level, on SQLite and on Postgres (issue 10, items
4, 5 and 7): the Host allow-list (DNS rebinding), cross-site writes, JSON content types, the
app sync that must not reflect what it fetched, the app URL allow-list, and key strength.

Requests go in-process through the ASGI app (`httpx.ASGITransport`, so every header is ours to
set, as a browser or an attacker would set it); the app that sync and runs call out to is a real
HTTP server on a loopback port that records every request it gets. The same rules seen from a
real browser are in test_security_browser.py; slow clients in test_security_slowloris.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stepwell
from stepwell.cli import main as cli
from stepwell.core.config import ConfigError
from stepwell.core.protocol import hashed_key
from stepwell.server.app import create_app
from stepwell.service import Service

SIGNING_KEY = f"signkey-prod-{secrets.token_hex(32)}"
EVENT_KEY = secrets.token_hex(16)
SECRET_BODY = "ami-id: i-0123 SECRET-ACCESS-KEY=wJalrXUtnFEMI/K7MDENG"
SDK_HEADERS = {"x-inngest-sdk": "inngest-py:v0.5.19", "content-type": "application/json"}


def registration(url: str, step_url: str | None = None) -> dict[str, Any]:
    return {"appName": "evil", "url": url, "functions": [{
        "id": "grab", "name": "grab", "triggers": [{"event": "evil/go"}],
        "steps": {"step": {"id": "step", "runtime": {
            "url": step_url or f"{url}?fnId=grab&stepId=step"}}}}]}


class Recorder:
    """A loopback HTTP server standing for whatever a URL points at (an app, a metadata
    service): it records every request and answers PUTs with `SECRET_BODY`, POSTs as an SDK
    whose function completes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    async def handle(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))
        if request.method == "PUT":
            return Response(SECRET_BODY, status_code=200, media_type="text/plain")
        return Response(json.dumps("done"), headers=SDK_HEADERS)


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = Starlette(routes=[Route("/{path:path}", rec.handle, methods=["GET", "PUT", "POST"])])
    sock = socket.create_server(("127.0.0.1", 0))
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield rec
    server.should_exit = True
    await task
    sock.close()


Client = Callable[..., Any]


@pytest.fixture
def client(make_engine: Any) -> Client:
    """`async with client(**create_app options, engine={...}) as (http, engine):` the app over
    a started engine on the test's database, reached as http://localhost:8288."""

    @asynccontextmanager
    async def factory(*, engine: dict[str, Any] | None = None, host: str = "localhost:8288",
                      **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                             stepwell.Engine]]:
        async with make_engine(**(engine or {})) as eng:
            asgi = create_app(Service(eng), **options)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                         base_url=f"http://{host}") as http:
                yield http, eng

    return factory


async def stored_events(engine: stepwell.Engine) -> list[str]:
    return [e.name for e, _received in await engine.events()]


# --- 10.4: Host allow-list (DNS rebinding) ------------------------------------------------------


async def test_a_foreign_host_name_is_misdirected_and_reads_nothing(client: Client) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: it must not read or write."""
    async with client() as (http, engine):
        await engine.send("shop/secret", {"card": "4111"})
        for method, path in (("GET", "/v1/events"), ("GET", "/v1/runs"), ("GET", "/dev"),
                             ("GET", "/dashboard"), ("GET", "/health")):
            reply = await http.request(method, path, headers={"host": "evil.test:8288"})
            assert reply.status_code == 421, (path, reply.text)
            assert "4111" not in reply.text
            body = reply.json()
            assert body["status"] == 421 and "evil.test:8288" in body["error"]
            assert "localhost" in body["error"] and "--allowed-host" in body["error"]
        sent = await http.post("/e/anything", json={"name": "rebound"},
                               headers={"host": "rebind.attacker.example"})
        assert sent.status_code == 421
        assert await stored_events(engine) == ["shop/secret"]


async def test_loopback_names_on_any_port_are_answered_by_default(client: Client) -> None:
    async with client() as (http, _engine):
        for host in ("localhost", "localhost:1234", "127.0.0.1:8288", "[::1]:9", "[::1]",
                     "LOCALHOST:8288"):
            reply = await http.get("/v1/events", headers={"host": host})
            assert reply.status_code == 200, (host, reply.text)
        for host in ("127.0.0.2", "localhost.evil.test", "[::2]:8288", "0.0.0.0:8288", "",
                     "local host"):
            reply = await http.get("/v1/events", headers={"host": host})
            assert reply.status_code in (400, 421), (host, reply.text)


async def test_configured_hosts_suffixes_and_star(client: Client) -> None:
    hosts = ["localhost", "stepwell.internal", ".example.com", "10.0.0.5:8288"]
    async with client(allowed_hosts=hosts) as (http, _engine):
        for host, status in (("stepwell.internal:443", 200), ("api.example.com", 200),
                             ("example.com", 421), ("10.0.0.5:8288", 200),
                             ("10.0.0.5:9999", 421), ("127.0.0.1:8288", 421)):
            reply = await http.get("/v1/events", headers={"host": host})
            assert reply.status_code == status, (host, reply.text)
    async with client(allowed_hosts="localhost, api.internal") as (http, _engine):
        assert (await http.get("/v1/events", headers={"host": "api.internal"})
                ).status_code == 200
        assert (await http.get("/v1/events", headers={"host": "a"})).status_code == 421
    async with client(allowed_hosts=["*"]) as (http, _engine):
        assert (await http.get("/v1/events", headers={"host": "anything.at.all"})
                ).status_code == 200
    with pytest.raises(ConfigError, match="not a host"):
        create_app(Service(stepwell.Engine(db="sqlite:///:memory:")), allowed_hosts=["a/b"])


def test_the_cli_adds_the_bound_host_and_the_env_var() -> None:
    from stepwell.server.guard import HostAllowList, allowed_hosts

    hosts = HostAllowList.of(allowed_hosts(["a.internal, b.internal", "c.internal"],
                                           "192.168.1.20"))
    for header in ("192.168.1.20:8288", "a.internal", "b.internal:80", "c.internal",
                   "localhost:3"):
        assert hosts.allows(header), header
    wildcard = HostAllowList.of(allowed_hosts([], "0.0.0.0"))
    assert not wildcard.allows("0.0.0.0:8288") and not wildcard.allows("192.168.1.20")
    result = CliRunner().invoke(cli, ["serve", "--db", "sqlite:///:memory:", "--allowed-host",
                                      "not a/host"])
    assert result.exit_code == 1 and "not a host name" in result.output
    result = CliRunner(env={"STEPWELL_ALLOWED_HOSTS": "ok.internal bad/one"}).invoke(
        cli, ["serve", "--db", "sqlite:///:memory:"])
    assert result.exit_code == 1 and "'bad/one'" in result.output


# --- 10.4: JSON content type and cross-site writes ---------------------------------------------


JSON_POSTS = ["/e/key", "/fn/register", "/v1/events", "/v1/apps/sync", "/v1/signals",
              "/v1/cancellations", "/v1/runs/01ABC/replay"]


async def test_json_routes_refuse_other_content_types(client: Client) -> None:
    """A page may POST text/plain, a form or multipart anywhere without a preflight; the body
    here is a valid registration, so only the content type can stop it."""
    body = json.dumps(registration("http://127.0.0.1:9/api"))
    async with client() as (http, engine):
        for path in JSON_POSTS:
            for content_type in ("text/plain", "text/plain;charset=UTF-8",
                                 "application/x-www-form-urlencoded", "multipart/form-data",
                                 None):
                headers = {"content-type": content_type} if content_type else {}
                reply = await http.post(path, content=body, headers=headers)
                assert reply.status_code == 415, (path, content_type, reply.text)
                error = reply.json()["error"]
                assert "application/json" in error and path in error
        assert engine._worker.registry.remote == {}
        assert await engine._worker.read(lambda tx: tx.list_apps()) == []
        assert await stored_events(engine) == []
        # What the SDKs send is accepted, parameters included.
        for content_type in ("application/json", "application/json; charset=utf-8",
                             "Application/JSON"):
            reply = await http.post("/fn/register", content=body,
                                    headers={"content-type": content_type})
            assert reply.status_code == 200, (content_type, reply.text)
        # A body-less POST needs no content type; unknown routes still answer 404 / 405.
        assert (await http.post("/v1/runs/nope/cancel")).status_code == 404
        assert (await http.post("/v2/nothing", content="x")).status_code == 404
        assert (await http.put("/fn/register", content="x")).status_code == 405


CROSS_SITE = [{"origin": "http://evil.test"}, {"origin": "null"},
              {"origin": "http://localhost:9999"}, {"origin": "http://127.0.0.1:8288"},
              {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
              {"origin": "http://localhost:8288", "sec-fetch-site": "cross-site"}]


async def test_cross_site_writes_are_refused(client: Client) -> None:
    """`Origin` must be this server (the Host the request names); the browser's own verdict in
    `Sec-Fetch-Site` must not be another site (another port of 127.0.0.1 is "same-site")."""
    async with client() as (http, engine):
        for headers in CROSS_SITE:
            for path, body in (("/fn/register", registration("http://127.0.0.1:9/api")),
                               ("/e/key", {"name": "forged"}),
                               ("/v1/events", {"name": "forged"})):
                reply = await http.post(path, json=body, headers=headers)
                assert reply.status_code == 403, (path, headers, reply.text)
                assert reply.json()["status"] == 403
                assert "refused" in reply.json()["error"]
            reply = await http.delete("/v1/runs/01ABC", headers=headers)
            assert reply.status_code == 403, (headers, reply.text)
        assert engine._worker.registry.remote == {} and await stored_events(engine) == []
        # The dashboard's own requests (same origin), and reads from anywhere, pass.
        for headers in ({"origin": "http://localhost:8288", "sec-fetch-site": "same-origin"},
                        {"sec-fetch-site": "none"}, {}):
            reply = await http.post("/v1/events", json={"name": "mine"}, headers=headers)
            assert reply.status_code == 200, (headers, reply.text)
        reply = await http.get("/v1/events", headers={"sec-fetch-site": "cross-site",
                                                      "origin": "http://evil.test"})
        assert reply.status_code == 200
        assert await stored_events(engine) == ["mine"] * 3


async def test_behind_a_tls_proxy_the_page_origin_matches_the_host(client: Client) -> None:
    async with client(allowed_hosts=["stepwell.example.com"],
                      host="stepwell.example.com") as (http, engine):
        ok = await http.post("/v1/events", json={"name": "mine"},
                             headers={"origin": "https://stepwell.example.com"})
        assert ok.status_code == 200, ok.text
        other_port = await http.post("/v1/events", json={"name": "x"},
                                     headers={"origin": "https://stepwell.example.com:8443"})
        assert other_port.status_code == 403
        assert await stored_events(engine) == ["mine"]


# --- 10.5: sync calls out, but never reflects what it got ---------------------------------------


async def test_sync_reports_status_and_reason_never_the_body(client: Client,
                                                             recorder: Recorder) -> None:
    async with client() as (http, _engine):
        reply = await http.post("/v1/apps/sync", json={"url": f"{recorder.url}/latest/meta"})
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert SECRET_BODY not in error and "SECRET" not in error and "ami-id" not in error
        assert "HTTP 200" in error and "no Inngest SDK" in error
        assert recorder.requests == [("PUT", "/latest/meta")]


async def test_app_url_allow_list_bounds_sync_registration_and_calls(
        client: Client, recorder: Recorder, make_engine: Any) -> None:
    """With `app_url_allow`, the server calls no URL outside the list, whoever supplied it:
    the sync caller, the registering app, or an app stored by another process."""
    policy = {"app_url_allow": "10.0.0.0/8,app.internal"}
    async with client(engine=policy) as (http, engine):
        for url in (f"{recorder.url}/api", "http://169.254.169.254/latest/meta-data",
                    recorder.url.replace("127.0.0.1", "localhost"), "http://[::1]:9/",
                    "http://app.internal@127.0.0.1:9/", "http://2130706433:9/"):
            reply = await http.post("/v1/apps/sync", json={"url": url})
            assert reply.status_code == 403, (url, reply.text)
            assert "allow-list" in reply.json()["error"]
        for body in (registration(f"{recorder.url}/api"),
                     registration("http://app.internal/api",
                                  step_url="http://169.254.169.254/?fnId=grab&stepId=step")):
            reply = await http.post("/fn/register", json=body)
            assert reply.status_code == 403, reply.text
            assert "--app-url-allow" in reply.json()["error"]
        allowed = await http.post("/fn/register", json=registration("http://app.internal/api"))
        assert allowed.status_code == 200, allowed.text
        assert await engine._worker.read(lambda tx: [a[0] for a in tx.list_apps()]) == ["evil"]
    assert recorder.requests == []

    # An app registered (and stored) by a server without the list, then run by one with it.
    async with client() as (http, engine):
        assert (await http.post("/fn/register", json=registration(f"{recorder.url}/api"))
                ).status_code == 200
    async with make_engine(app_url_allow=["app.internal"]) as engine:
        event_id = await engine.send("evil/go", {})
        await engine.idle()
        [run] = await engine.runs(event_id=event_id)
        run = await engine.wait(run.id)
        assert run.status == "failed"
        assert run.error is not None and run.error["name"] == "AppUrlNotAllowed"
    assert recorder.requests == []


def test_app_url_allow_list_entries_are_checked() -> None:
    from stepwell.core.urlpolicy import AppUrlPolicy

    policy = AppUrlPolicy.parse(["127.0.0.0/8, ::1", "*.svc.local", "app.internal"])
    assert policy is not None
    for url, ok in (("http://127.0.0.1:3000/api/inngest", True), ("http://[::1]:3/", True),
                    ("https://fn.svc.local/x", True), ("http://svc.local/", False),
                    ("http://app.internal./", True), ("http://APP.internal/", True),
                    ("http://localhost:3000/", False), ("http://[::ffff:127.0.0.1]/", True),
                    ("ftp://app.internal/", False), ("http://[::1", False)):
        try:
            policy.check(url)
            allowed = True
        except ValueError:
            allowed = False
        assert allowed is ok, url
    assert AppUrlPolicy.parse("*") is None and AppUrlPolicy.parse([]) is None
    for bad in ("http://x", "a b!", "10.0.0.0/33"):
        with pytest.raises(ConfigError):
            AppUrlPolicy.parse(bad)


# --- 10.7: keys ---------------------------------------------------------------------------------


WEAK_SIGNING_KEYS = ["signkey-prod-", "short", "signkey-prod-abcd", "signkey-prod-" + "0" * 64,
                     "signkey-prod-" + "ab" * 32, "signkey-prod-xyz" + "0123456789abcdef" * 4,
                     "signkey-prod-" + "0123456789abcdef" * 4 + "0", "signkey-prod", ""]


async def test_weak_signing_keys_are_refused_at_start_up(make_engine: Any) -> None:
    async with make_engine() as engine:
        for key in WEAK_SIGNING_KEYS:
            with pytest.raises(ConfigError, match="signing key"):
                create_app(Service(engine), signing_keys=[key])
            with pytest.raises(ConfigError, match="signing key"):
                stepwell.Engine(db="sqlite:///:memory:", signing_key=key)
        for key in ("", "ek", "short-key", "a" * 40, "has space 0123456789", "a/b0123456789abcdef"):
            with pytest.raises(ConfigError, match="event key"):
                create_app(Service(engine), event_keys=[key])
        # Good keys: Inngest's format, the bare hex part, any env name the SDKs accept.
        for key in (SIGNING_KEY, SIGNING_KEY.removeprefix("signkey-prod-"),
                    f"signkey-branch_1-{secrets.token_hex(16)}"):
            create_app(Service(engine), signing_keys=[key])


def test_the_cli_refuses_weak_keys_with_a_clear_error() -> None:
    for args, words in ((["--signing-key", "signkey-prod-"], "no secret"),
                        (["--signing-key", "short"], "hex digits"),
                        (["--signing-key", "signkey-prod-abcd"], "at least 32"),
                        (["--event-key", "short"], "at least 16")):
        for command in ("serve", "dev"):
            result = CliRunner().invoke(cli, [command, "--db", "sqlite:///:memory:", *args])
            assert result.exit_code == 1, (command, args, result.output)
            assert words in result.output and "Traceback" not in result.output


async def test_an_empty_secret_bearer_never_passes(client: Client) -> None:
    """The old hole: with `signkey-prod-` configured, `Bearer signkey-x-` matched the empty
    secret. Now no key has an empty secret, and an empty token matches nothing."""
    async with client(signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY]) as (http, engine):
        for token in ("signkey-x-", "signkey-prod-", "", "signkey-prod-" + "0" * 64):
            reply = await http.get("/v1/events", headers={"authorization": f"Bearer {token}"})
            assert reply.status_code == 401, token
            reply = await http.post("/fn/register", json=registration("http://127.0.0.1:9/"),
                                    headers={"authorization": f"Bearer {token}"})
            assert reply.status_code == 401, token
        good = {"authorization": f"Bearer {hashed_key(SIGNING_KEY)}"}
        assert (await http.get("/v1/events", headers=good)).status_code == 200
        for key in (EVENT_KEY[:-1], EVENT_KEY + "0", EVENT_KEY.upper(), ""):
            reply = await http.post(f"/e/{key}", json={"name": "x"})
            assert reply.status_code in (401, 404), key
        assert (await http.post(f"/e/{EVENT_KEY}", json={"name": "ok"})).status_code == 200
        assert await stored_events(engine) == ["ok"]


def test_event_keys_are_compared_in_full() -> None:
    from stepwell.core.protocol import event_key_ok

    keys = ["a" * 8 + "0123456789", "b" * 8 + "0123456789"]
    assert event_key_ok(keys[1], keys)
    assert not event_key_ok(keys[1][:-1], keys) and not event_key_ok("", keys)
    assert not event_key_ok(keys[0] + keys[1], keys)
