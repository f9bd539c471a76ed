"""Hostile web pages against a local stepwell server, in headless Chromium (issue 10, item 4).

A developer runs `stepwell dev` and opens some web page. That page, served from another
origin (here: another loopback port, as `127.0.0.1` (same-site) and as `localhost`
(cross-site)), tries everything a page can send without asking: `no-cors` fetches with
`text/plain` bodies, a `text/plain` form whose field names spell a JSON registration, and a
JSON fetch (which needs a CORS preflight the server never grants). None of it may register a
function or store an event; the requests that reach the server are answered 403 or 415.

DNS rebinding is played with Chromium's own resolver (`--host-resolver-rules` maps
`rebind.test` to 127.0.0.1): a page at `http://rebind.test:<port>` is same-origin with the
server as far as the browser knows, so only the Host check stands between it and the data.

Nothing sleeps: the attack page reports when each attempt has settled, and playwright's
waits carry a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Browser, Response, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service

CHROMIUM = os.environ.get("STEPWELL_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
WAIT_MS = 15_000
REBIND_HOST = "rebind.test"

pytestmark = pytest.mark.asyncio(loop_scope="module")

REGISTRATION = {"appName": "evil", "url": "http://127.0.0.1:9/api", "functions": [{
    "id": "grab", "triggers": [{"event": "*"}],
    "steps": {"step": {"id": "step", "runtime": {"url": "http://127.0.0.1:9/api"}}}}]}
# A text/plain form sends `name=value`: a name ending inside a JSON string and a value that
# closes it make the body a valid registration (the '=' lands inside the URL).
FORM_NAME = '{"appName":"formapp","url":"http://127.0.0.1:9/api?x'
FORM_VALUE = '","functions":[{"id":"f","triggers":[{"event":"*"}]}]}'

ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink" action="TARGET/fn/register">
  <input type="hidden" id="field">
</form>
<script>
const target = "TARGET";
const registration = REGISTRATION;
async function attempt(path, init) {
  try { const r = await fetch(target + path, init); return r.type + ":" + r.status; }
  catch (err) { return "blocked:" + err.name; }
}
window.attacks = Promise.all([
  attempt("/fn/register", {method: "POST", mode: "no-cors", body: JSON.stringify(registration),
                            headers: {"content-type": "text/plain"}}),
  attempt("/e/anykey", {method: "POST", mode: "no-cors",
                        body: JSON.stringify({name: "forged/event", data: {}})}),
  attempt("/v1/events", {method: "POST", mode: "no-cors",
                         body: JSON.stringify({name: "forged/api", data: {}})}),
  attempt("/v1/apps/sync", {method: "POST", mode: "no-cors",
                            body: JSON.stringify({url: "http://127.0.0.1:9/api"})}),
  attempt("/fn/register", {method: "POST", mode: "cors", body: JSON.stringify(registration),
                           headers: {"content-type": "application/json"}}),
  attempt("/v1/events", {method: "GET", mode: "cors"}),
]);
const field = document.getElementById("field");
field.name = FORM_NAME;
field.value = FORM_VALUE;
window.formDone = new Promise(resolve => {
  document.querySelector("iframe").addEventListener("load", () => resolve(true));
});
document.getElementById("form").submit();
</script></body></html>"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"these tests need Chromium at {CHROMIUM} (`bash scripts/setup.sh`)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1"])
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Served:
    url: str
    port: int


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[Served]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield Served(f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        await task
        sock.close()


def attack_site(target: str) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        html = (ATTACK_PAGE.replace("TARGET", target)
                .replace("REGISTRATION", json.dumps(REGISTRATION))
                .replace("FORM_NAME", json.dumps(FORM_NAME))
                .replace("FORM_VALUE", json.dumps(FORM_VALUE)))
        return HTMLResponse(html)

    return Starlette(routes=[Route("/", page)])


async def nothing_stored(engine: stepwell.Engine) -> None:
    assert engine._worker.registry.remote == {}
    assert await engine._worker.read(lambda tx: tx.list_apps()) == []
    assert await engine.events() == []


@pytest.mark.parametrize("attacker_host", ["127.0.0.1", "localhost"])
async def test_a_page_on_another_origin_cannot_register_or_send(
        browser: Browser, make_engine: Any, attacker_host: str) -> None:
    async with make_engine() as engine, serve(create_app(Service(engine))) as server, \
            serve(attack_site(server.url)) as attacker:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            answers: list[tuple[str, str, int]] = []

            def seen(response: Response) -> None:
                if response.url.startswith(server.url):
                    answers.append((response.request.method, response.url, response.status))

            page.on("response", seen)
            await page.goto(f"http://{attacker_host}:{attacker.port}/")
            results = await page.evaluate("window.attacks")
            assert await page.evaluate("window.formDone")
            frame = page.frame(name="sink")
            assert frame is not None
            form_answer = await frame.content()
        finally:
            await context.close()
        await engine.idle()
        await nothing_stored(engine)
        # The no-cors attempts were sent and refused (opaque to the page, seen by playwright);
        # the JSON one never left the browser (its preflight failed); the read was not CORS-
        # readable by the page.
        assert results[:4] == ["opaque:0"] * 4, results
        assert results[4].startswith("blocked:") and results[5].startswith("blocked:"), results
        refused = {(method, url.removeprefix(server.url)): status
                   for method, url, status in answers}
        for path in ("/fn/register", "/e/anykey", "/v1/events", "/v1/apps/sync"):
            assert refused.get(("POST", path)) == 403, (path, answers)
        assert "refused" in form_answer and "403" in form_answer


async def test_dns_rebinding_reads_nothing(browser: Browser, make_engine: Any) -> None:
    async with make_engine() as engine, serve(create_app(Service(engine))) as server:
        await engine.send("shop/secret", {"card": "4111-1111"})
        context = await browser.new_context()
        try:
            page = await context.new_page()
            first = await page.goto(f"http://{REBIND_HOST}:{server.port}/dashboard")
            assert first is not None and first.status == 421
            # The page is now same-origin with the server as far as the browser knows.
            status, text = await page.evaluate("""async () => {
                const r = await fetch("/v1/events");
                return [r.status, await r.text()];
            }""")
            posted = await page.evaluate("""async () => (await fetch("/v1/events", {
                method: "POST", headers: {"content-type": "application/json"},
                body: JSON.stringify({name: "rebound"})})).status""")
            # The same server under its own name still answers the same browser.
            own = await page.goto(f"{server.url}/v1/events")
            assert own is not None and own.status == 200
            assert "4111" in await own.text()
        finally:
            await context.close()
        assert status == 421 and "4111" not in text and REBIND_HOST in text
        assert posted == 421
        assert [e.name for e, _ in await engine.events()] == ["shop/secret"]
