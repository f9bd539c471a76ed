"""The dashboard in headless Chromium (Debian's, through playwright) against a real server:
uvicorn on a free port, a real engine on SQLite with the real clock.

Every check is on what a person sees. Nothing sleeps: playwright's expectations retry until
they hold (the pages refresh themselves every 2 s), and engine-side conditions are awaited
with a deadline. One browser serves the whole module (launching it costs about a second); each
test gets its own server, database and browser context. The browser tests run on SQLite only:
the pages read through the same REST API whatever the backend, which test_dashboard_api.py
covers on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service

CHROMIUM = os.environ.get("STEPWELL_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
WAIT_MS = 10_000              # an expectation gives up after this (refreshes come every 2 s)
SIGNING_KEY = f"signkey-test-{secrets.token_hex(32)}"
EVENT_KEY = secrets.token_hex(16)

pytestmark = pytest.mark.asyncio(loop_scope="module")
expect.set_options(timeout=WAIT_MS)


def make_app() -> stepwell.App:
    app = stepwell.App("shop")
    attempts: dict[str, int] = {}

    @app.function(id="greet", trigger="shop/greet",
                  throttle={"limit": 5, "period": "1s", "key": "event.data.name"},
                  concurrency=[{"limit": 2, "key": "event.data.name"}])
    async def greet(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, str]:
        def get_name() -> str:
            stepwell.record_model_usage("tiny-model", input_tokens=12, output_tokens=3)
            return str(ctx.event.data.get("name", "world"))

        name = await step.run("get-name", get_name)
        return {"greeting": f"hello {name}"}

    @app.function(id="slow", trigger="shop/slow")
    async def slow(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.run("first", lambda: 1)
        await step.sleep("nap", "1h")
        return "woke"

    @app.function(id="broken", trigger="shop/broken", retries=3)
    async def broken(ctx: stepwell.Context, step: stepwell.Step) -> None:
        def reserve() -> None:
            attempts[ctx.run_id] = attempts.get(ctx.run_id, 0) + 1
            if attempts[ctx.run_id] == 1:
                raise ValueError("database is warming up")
            raise stepwell.NonRetriableError("out of stock")

        await step.run("reserve", reserve)

    replays: set[str] = set()

    @app.function(id="reorder", trigger="shop/reorder")
    async def reorder(ctx: stepwell.Context, step: stepwell.Step) -> list[str]:
        # Steps reached in another order on the replay after the sleep: a recorded warning.
        order = ["x", "y"] if ctx.run_id not in replays else ["y", "x"]
        replays.add(ctx.run_id)
        out = [await step.run(name, lambda n=name: n) for name in order]
        await step.sleep("nap", "100ms")
        return out

    @app.function(id="big", trigger="shop/big")
    async def big(ctx: stepwell.Context, step: stepwell.Step) -> list[str]:
        return [f"line {i:05d} " + "x" * 60 for i in range(3000)]  # about 250 KB of JSON

    return app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"the dashboard tests need Chromium at {CHROMIUM} (Debian's `chromium` "
                    "package; `bash scripts/setup.sh` installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Dashboard:
    url: str
    engine: stepwell.Engine
    page: Page
    problems: list[str]

    async def open(self, path: str = "/") -> Page:
        await self.page.goto(self.url + path)
        return self.page

    async def run_of(self, event_id: str) -> str:
        """The id of the run `event_id` started (runs are created with the event)."""
        [run] = await self.engine.runs(event_id=event_id)
        return run.id

    async def until(self, check: Callable[[], Any], what: str) -> None:
        """Poll an engine-side condition, with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_MS / 1000
        while not await check():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@pytest_asyncio.fixture(loop_scope="module")
async def start(browser: Browser, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`dash = await start(**create_app_options)`: a server on a fresh database and a page."""
    stack = contextlib.AsyncExitStack()

    async def factory(load_error: str | None = None, **options: Any) -> Dashboard:
        engine = stepwell.Engine(make_app(), db=f"sqlite:///{tmp_path / 'dash.db'}",
                                 fsync=False, retry_interval_seconds=0.05,
                                 prefetch_seconds=0)  # every sleep hands the run back
        await engine.start()
        stack.push_async_callback(engine.stop)
        sock = socket.create_server(("127.0.0.1", 0))
        stack.callback(sock.close)
        service = Service(engine, load_error=load_error)
        server = uvicorn.Server(uvicorn.Config(create_app(service, **options),
                                               log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))

        async def stop_server() -> None:
            server.should_exit = True
            await task

        stack.push_async_callback(stop_server)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        stack.push_async_callback(context.close)
        context.set_default_timeout(WAIT_MS)
        page = await context.new_page()
        problems: list[str] = []
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
        # Offline: the page must never fetch anything but its own server (no CDN).
        page.on("request", lambda request: None if request.url.startswith(url) else
                problems.append(f"external request: {request.url}"))
        return Dashboard(url, engine, page, problems)

    async with stack:
        yield factory


def expect_text(page: Page, text: str) -> Any:
    return expect(page.get_by_text(text, exact=False).first).to_be_visible(timeout=WAIT_MS)


# --- runs ----------------------------------------------------------------------------------------


async def test_code_that_does_not_load_is_shown_above_every_page(start: Any) -> None:
    """`stepwell dev` serving while the app's code has a syntax error: every page says so."""
    dash = await start(load_error='cannot import app.py:\n  File "app.py", line 3\n'
                                  "SyntaxError: invalid syntax")
    page = await dash.open("/dashboard/events")
    problem = page.locator("#code-problem")
    await expect(problem).to_be_visible()
    await expect(problem).to_contain_text("Your code does not load")
    await expect(problem).to_contain_text("SyntaxError: invalid syntax")
    await page.get_by_role("link", name="Functions").click()
    await expect(problem).to_be_visible()
    assert dash.problems == []


async def test_a_new_run_appears_and_its_page_shows_steps_and_output(start: Any) -> None:
    dash = await start()
    page = await dash.open("/")
    await expect(page).to_have_url(f"{dash.url}/dashboard/runs")
    await expect_text(page, "No runs yet")
    await expect(page.locator("#code-problem")).to_be_hidden()

    event_id = await dash.engine.send("shop/greet", {"name": "ada"})
    run_id = await dash.run_of(str(event_id))
    row = page.locator(f"tr[data-run-id='{run_id}']")
    await expect(row).to_contain_text("shop/greet", timeout=WAIT_MS)   # auto-refresh
    await expect(row).to_contain_text("Completed", timeout=WAIT_MS)
    await expect(row).to_contain_text("shop/greet")                    # the trigger column

    await row.click()
    await expect(page).to_have_url(f"{dash.url}/dashboard/runs/{run_id}")
    await expect(page.locator("h1")).to_have_text("shop/greet")
    await expect(page.locator(".page-header .badge")).to_have_text("Completed")
    await expect(page.locator("section[data-section='output']")).to_contain_text('"hello ada"')
    trigger = page.locator("section[data-section='trigger']")
    await expect(trigger).to_contain_text(str(event_id))
    await expect(trigger).to_contain_text('"name": "ada"')
    step = page.locator("li.step[data-step='get-name']")
    await expect(step).to_contain_text("completed")
    await expect(step).to_contain_text("1 attempt")
    await expect(step).to_contain_text('"ada"')
    await expect(page.locator("#cancel-run")).to_have_count(0)
    await expect(page.locator("#run-tokens")).to_have_text("12 in, 3 out (1 model request)")
    assert dash.problems == []


async def test_a_failed_run_shows_its_error_and_attempts_and_filters_find_it(
        start: Any) -> None:
    dash = await start()
    ok = str(await dash.engine.send("shop/greet", {"name": "x"}))
    failed = await dash.run_of(str(await dash.engine.send("shop/broken", {"order": 7})))
    await dash.engine.wait(failed, timeout=10)
    await dash.engine.wait(await dash.run_of(ok), timeout=10)

    page = await dash.open("/dashboard/runs")
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.select_option("#filter-status", "Failed")
    await expect(page.locator("tbody tr")).to_have_text([re.compile("Failed.*shop/broken")])
    await expect(page).to_have_url(f"{dash.url}/dashboard/runs?status=Failed")
    await page.select_option("#filter-status", "")
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.select_option("#filter-function", "shop/greet")
    # One row, and it is greet's (asserted together: a list of texts checks the count too).
    await expect(page.locator("tbody tr")).to_have_text([re.compile("Completed.*shop/greet")])
    await page.select_option("#filter-status", "Running")
    await expect_text(page, "No runs match these filters")

    page = await dash.open(f"/dashboard/runs/{failed}")
    await expect(page.locator(".page-header .badge")).to_have_text("Failed")
    await expect(page.locator("section[data-section='error']")).to_contain_text(
        "NonRetriableError: out of stock")
    step = page.locator("li.step[data-step='reserve']")
    await expect(step).to_contain_text("failed")
    await expect(step).to_contain_text("2 attempts")
    failures = step.locator("details.failures")
    await expect(failures).to_contain_text("2 failed attempts")
    await expect(failures.locator("li.failure").nth(0)).to_contain_text(
        "ValueError: database is warming up")
    await expect(failures.locator("li.failure").nth(1)).to_contain_text("out of stock")
    assert dash.problems == []


async def test_orphaned_runs_can_be_filtered(start: Any, tmp_path: Path) -> None:
    """A run of a function the code no longer defines (deleted since the run slept) is found
    with the status filter's "Orphaned" entry, and only it."""
    old = stepwell.App("shop")

    @old.function(id="gone", trigger="shop/gone")
    async def gone(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.sleep("nap", "50ms")
        return "back"

    async with stepwell.Engine(old, db=f"sqlite:///{tmp_path / 'dash.db'}", fsync=False,
                               prefetch_seconds=0) as engine:
        [run] = await engine.runs(event_id=await engine.send("shop/gone", {}))
        await engine.idle()                      # asleep, handed back
    dash = await start()                         # the same database, without shop/gone
    ok = await dash.run_of(str(await dash.engine.send("shop/greet", {"name": "x"})))
    await dash.engine.wait(ok, timeout=10)

    async def marked() -> bool:
        found = await dash.engine.get_run(run.id)
        return found is not None and any(w.startswith("orphaned:") for w in found.warnings)

    await dash.until(marked, "the run to be marked orphaned")
    page = await dash.open("/dashboard/runs")
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.select_option("#filter-status", "orphaned")
    await expect(page.locator("tbody tr")).to_have_text(
        [re.compile("Running.*orphaned.*shop/gone", re.IGNORECASE)])
    await expect(page).to_have_url(f"{dash.url}/dashboard/runs?status=orphaned")
    assert dash.problems == []


async def test_cancel_a_sleeping_run_from_its_page(start: Any) -> None:
    dash = await start()
    run_id = await dash.run_of(str(await dash.engine.send("shop/slow", {})))
    page = await dash.open(f"/dashboard/runs/{run_id}")
    await expect(page.locator("li.step[data-step='nap']")).to_contain_text("sleeping")
    await expect(page.locator(".page-header .badge")).to_have_text("Running")

    await page.click("#cancel-run")
    await expect(page.locator(".page-header .badge")).to_have_text("Cancelled")
    await expect_text(page, "Run cancelled.")
    await expect(page.locator("#cancel-run")).to_have_count(0)
    await expect(page.locator("li.step[data-step='nap']")).to_contain_text("interrupted")
    run = await dash.engine.get_run(run_id)
    assert run is not None and run.status == "cancelled"
    assert dash.problems == []


async def test_replay_a_run_from_its_page(start: Any) -> None:
    dash = await start()
    event_id = str(await dash.engine.send("shop/greet", {"name": "bo"}))
    run_id = await dash.run_of(event_id)
    await dash.engine.wait(run_id, timeout=WAIT_MS / 1000)
    page = await dash.open(f"/dashboard/runs/{run_id}")
    await expect(page.locator(".page-header .badge")).to_have_text("Completed")

    await page.click("#replay-run")
    await expect(page).not_to_have_url(f"{dash.url}/dashboard/runs/{run_id}")
    await expect(page.locator(".page-header .badge")).to_have_text("Completed",
                                                                   timeout=WAIT_MS)
    await expect(page.locator("section[data-section='output']")).to_contain_text('"hello bo"')
    await expect(page.locator("#replay-of")).to_have_text(run_id)
    runs = await dash.engine.runs(event_id=event_id)
    assert len(runs) == 2 and page.url.endswith(next(r.id for r in runs if r.id != run_id))
    assert dash.problems == []


async def test_replay_warnings_are_shown(start: Any) -> None:
    dash = await start()
    run_id = await dash.run_of(str(await dash.engine.send("shop/reorder", {})))
    run = await dash.engine.wait(run_id, timeout=10)
    assert run.warnings
    page = await dash.open(f"/dashboard/runs/{run_id}")
    await expect(page.locator(".page-header .badge")).to_have_text("Completed")
    await expect(page.locator(".warnings .notice-warning")).to_contain_text("non-determinism")
    assert dash.problems == []


async def test_large_output_is_truncated_with_a_show_all_toggle(start: Any) -> None:
    dash = await start()
    run_id = await dash.run_of(str(await dash.engine.send("shop/big", {})))
    await dash.engine.wait(run_id, timeout=10)
    page = await dash.open(f"/dashboard/runs/{run_id}")
    output = page.locator("section[data-section='output']")
    await expect(output).to_contain_text("line 00000")
    await expect(output).not_to_contain_text("line 02999")
    toggle = output.get_by_role("button", name="Show all")
    await expect(toggle).to_contain_text("KB")
    await toggle.click()
    await expect(output).to_contain_text("line 02999")
    await output.get_by_role("button", name="Show less").click()
    await expect(output).not_to_contain_text("line 02999")
    assert dash.problems == []


# --- events --------------------------------------------------------------------------------------


async def test_send_an_event_from_the_form_and_see_the_run_it_triggered(start: Any) -> None:
    dash = await start()
    page = await dash.open("/dashboard/events")
    await expect_text(page, "No events yet")

    await page.fill("#event-name", "shop/greet")
    await page.fill("#event-data", '{"name": "grace"')
    await page.click("#send-event button[type=submit]")
    await expect(page.locator("#send-result")).to_contain_text("The data is not valid JSON")

    await page.fill("#event-data", "[1, 2]")
    await page.click("#send-event button[type=submit]")
    await expect(page.locator("#send-result")).to_contain_text(
        "The event was not sent: event 'shop/greet' has 'data' of type list")
    assert await dash.engine.events() == []

    await page.fill("#event-data", '{"name": "grace"}')
    await page.click("#send-event button[type=submit]")
    sent = page.locator("#send-result a")
    await expect(sent).to_be_visible()
    event_id = await sent.inner_text()
    await expect(page.locator("#events tbody tr")).to_have_count(1)

    await sent.click()
    await expect(page).to_have_url(f"{dash.url}/dashboard/events/{event_id}")
    await expect(page.locator("h1")).to_have_text("shop/greet")
    await expect(page.locator("section[data-section='payload']")).to_contain_text('"grace"')
    runs = page.locator("#event-runs tbody tr")
    await expect(runs).to_have_count(1)
    await expect(runs).to_contain_text("shop/greet")
    await expect(runs).to_contain_text("Completed")
    await runs.locator("a.run-link").click()
    await expect(page.locator("section[data-section='output']")).to_contain_text("hello grace")
    assert dash.problems == []


async def test_events_filter_by_name(start: Any) -> None:
    dash = await start()
    await dash.engine.send("shop/greet", {"name": "a"})
    await dash.engine.send("shop/other", {})
    page = await dash.open("/dashboard/events")
    await expect(page.locator("#events tbody tr")).to_have_count(2)
    await page.fill("#filter-name", "shop/other")
    await page.press("#filter-name", "Enter")
    await expect(page.locator("#events tbody tr")).to_have_count(1)
    await expect(page.locator("#events tbody tr")).to_contain_text("shop/other")
    await expect(page).to_have_url(f"{dash.url}/dashboard/events?name=shop%2Fother")
    page = await dash.open("/dashboard/events/nope")
    await expect(page.locator("h1")).to_have_text("Event not found")
    await expect_text(page, "no event with id 'nope'")
    assert dash.problems == []


# --- functions and apps --------------------------------------------------------------------------

async def test_functions_show_flow_control_and_run_counts(start: Any) -> None:
    dash = await start()
    failed = await dash.run_of(str(await dash.engine.send("shop/broken", {})))
    await dash.engine.wait(failed, timeout=10)
    page = await dash.open("/dashboard/functions")
    greet = page.locator("tr[data-function='shop/greet']")
    await expect(greet).to_contain_text("shop/greet")
    await expect(greet).to_contain_text("throttle")
    await expect(greet).to_contain_text("limit 5 · period 1s · burst 1 · key event.data.name")
    await expect(greet).to_contain_text("concurrency")
    await expect(greet).to_contain_text("retries")
    broken = page.locator("tr[data-function='shop/broken']")
    await expect(broken.locator("a.count[data-status='Failed'] .n")).to_have_text("1")
    await expect(broken.locator("a.count[data-status='Completed'] .n")).to_have_text("0")
    # Versions: the one this code records, current, served by the dashboard's own worker.
    version = dash.engine._worker.registry.native["shop/broken"].spec.version
    current = broken.locator(f"li[data-version='{version}']")
    await expect(current).to_have_attribute("data-state", "current")
    await expect(current).to_contain_text("0 unfinished · 1 worker")

    await dash.engine.wait(await dash.run_of(str(await dash.engine.send("shop/greet",
                                                                        {"name": "z"}))))
    await page.reload()
    await expect(greet.locator("a.count[data-status='Completed'] .n")).to_have_text("1")
    await broken.locator("a.count[data-status='Failed']").click()
    await expect(page).to_have_url(
        f"{dash.url}/dashboard/runs?function=shop%2Fbroken&status=Failed")
    await expect(page.locator("#filter-status")).to_have_value("Failed")
    await expect(page.locator("#filter-function")).to_have_value("shop/broken")
    await expect(page.locator("tbody tr")).to_have_count(1)
    assert dash.problems == []

async def test_apps_page_shows_sync_errors(start: Any) -> None:
    dash = await start()
    page = await dash.open("/dashboard/apps")
    await expect_text(page, "No SDK app is synced")
    await expect(page.locator("section", has_text="In-process apps")).to_contain_text("greet")
    await page.fill("#app-url", "not a url")
    await page.click("#sync-app button[type=submit]")
    await expect(page.locator("#sync-result")).to_contain_text(
        "The app was not synced: 'url' must be the app's http(s) serve URL")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    await page.fill("#app-url", f"http://127.0.0.1:{port}/api/inngest")
    await page.click("#sync-app button[type=submit]")
    await expect(page.locator("#sync-result")).to_contain_text("cannot reach the app")
    assert dash.problems == []

async def test_unknown_pages_and_ids(start: Any) -> None:
    dash = await start()
    page = await dash.open("/dashboard/runs/01NOSUCHRUN")
    await expect(page.locator("h1")).to_have_text("Run not found")
    await expect_text(page, "no run with id '01NOSUCHRUN'")
    page = await dash.open("/dashboard/nowhere")
    await expect(page.locator("h1")).to_have_text("Page not found")
    await page.get_by_role("link", name="Back to runs").click()
    await expect(page.locator("h1")).to_have_text("Runs")
    assert dash.problems == []


# --- production mode -----------------------------------------------------------------------------


async def test_production_mode_asks_for_the_signing_key(start: Any) -> None:
    dash = await start(signing_keys=[SIGNING_KEY], event_keys=[EVENT_KEY])
    await dash.engine.send("shop/greet", {"name": "ada"})
    page = await dash.open("/dashboard/runs")
    await expect(page.locator("h1")).to_have_text("Signing key required")
    await expect_text(page, "runs in production mode")

    await page.fill("#signing-key", "signkey-test-0123")
    await page.press("#signing-key", "Enter")
    await expect(page.locator("h1")).to_have_text("Signing key required")
    await expect(page.locator(".notice-error")).to_contain_text(
        "The server did not accept that signing key")

    await page.fill("#signing-key", SIGNING_KEY)
    await page.press("#signing-key", "Enter")
    await expect(page.locator("h1")).to_have_text("Runs")
    await expect(page.locator("tbody tr")).to_contain_text("Completed")
    # Kept for the tab: other pages and a reload need no new key; forgetting it asks again.
    await page.get_by_role("link", name="Functions").click()
    await expect(page.locator("tr[data-function='shop/greet']")).to_be_visible()
    await page.reload()
    await expect(page.locator("tr[data-function='shop/greet']")).to_be_visible()
    await page.click("#forget-key")
    await expect(page.locator("h1")).to_have_text("Signing key required")
    assert dash.problems == []
