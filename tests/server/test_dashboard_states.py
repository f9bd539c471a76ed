"""The dashboard says what every run is doing, draws its timeline, finds runs and acts on them:
headless Chromium against a real server on SQLite with the real clock (the page's "now" is the
browser's), one browser for the module.

Each state is set up once for the module (one server, one database) and asserted on what the
runs list and the run page say. `STEPWELL_SCREENSHOTS=1` also writes the screenshots shown in
docs/dashboard.md (docs/img/).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
WAIT_MS = 10_000
SHOTS = Path(__file__).parents[2] / "docs" / "img"

pytestmark = pytest.mark.asyncio(loop_scope="module")
expect.set_options(timeout=WAIT_MS)


def make_app(gate: asyncio.Event) -> stepwell.App:
    app = stepwell.App("shop")

    @app.function(id="nap", trigger="shop/nap")
    async def nap(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("prepare", lambda: "ready")
        await step.sleep("nap", "1h")

    @app.function(id="approve", trigger="shop/order")
    async def approve(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_event("approval", event="shop/approved", match="data.order",
                                  if_="async.data.ok == true", timeout="1d")

    @app.function(id="signal", trigger="shop/signal")
    async def signal(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.wait_for_signal("go", signal="go-signal", timeout="2h")

    @app.function(id="parent", trigger="shop/parent")
    async def parent(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.invoke("child", function=nap, data={}, timeout="3h")

    @app.function(id="flaky", trigger="shop/flaky", retries=3)
    async def flaky(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("lookup", lambda: 1)

        def fail() -> None:
            raise ValueError("database is warming up")
        await step.run("charge", fail)

    @app.function(id="slowly", trigger="shop/slowly",
                  throttle={"limit": 1, "period": "1h", "key": "event.data.user"})
    async def slowly(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="single", trigger="shop/single", concurrency=[{"limit": 1}])
    async def single(ctx: stepwell.Context, step: stepwell.Step) -> None:
        async def hold() -> None:
            await gate.wait()
        await step.run("hold", hold)

    # Windows of an hour (real clock): they stay open, holding their events, during the test.
    @app.function(id="digest", trigger="shop/note",
                  debounce={"period": "1h", "key": "event.data.user"})
    async def digest(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="bundle", trigger="shop/item",
                  batch={"max_size": 50, "timeout": "1h", "key": "event.data.team"})
    async def bundle(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    @app.function(id="two", trigger="shop/two")
    async def two(ctx: stepwell.Context, step: stepwell.Step) -> list[Any]:
        a = await step.run("a", lambda: ctx.event.data.get("n", 0))
        b = await step.run("b", lambda: a + 1)
        return [a, b]

    return app


def ghost_app() -> stepwell.App:
    """A function the serving engine no longer defines: its run is orphaned."""
    app = stepwell.App("shop")

    @app.function(id="ghost", trigger="shop/ghost")
    async def ghost(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.sleep("nap", "50ms")

    return app


@dataclass
class Setup:
    url: str
    engine: stepwell.Engine
    page: Page
    runs: dict[str, str] = field(default_factory=dict)      # state -> run id
    problems: list[str] = field(default_factory=list)

    async def open(self, path: str) -> Page:
        await self.page.goto(self.url + path)
        return self.page

    async def run_of(self, event_id: object) -> str:
        [run] = await self.engine.runs(event_id=str(event_id))
        return run.id


async def until(check: Callable[[], Any], what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_MS / 1000
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    if not HAVE_CHROMIUM:
        pytest.fail(f"the dashboard tests need Chromium at {CHROMIUM}")
    db = f"sqlite:///{tmp_path_factory.mktemp('states') / 'dash.db'}"
    async with stepwell.Engine(ghost_app(), db=db, fsync=False) as first:
        ghost_run = await first.send("shop/ghost", {})
        [run] = await first.runs(event_id=str(ghost_run))

        async def sleeping() -> bool:
            found = await first.get_run(run.id)
            return found is not None and any(s.status == "sleeping" for s in found.steps)
        await until(sleeping, "the ghost run to sleep")
    gate = asyncio.Event()
    stack = contextlib.AsyncExitStack()
    async with stack:
        # Real backoff (15 s and more before the second attempt): the flaky run stays retrying.
        engine = stepwell.Engine(make_app(gate), db=db, fsync=False, prefetch_seconds=0)
        await engine.start()
        stack.push_async_callback(engine.stop)
        stack.callback(gate.set)
        sock = socket.create_server(("127.0.0.1", 0))
        stack.callback(sock.close)
        server = uvicorn.Server(uvicorn.Config(create_app(Service(engine)),
                                               log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))

        async def stop_server() -> None:
            server.should_exit = True
            await task

        stack.push_async_callback(stop_server)
        playwright = await stack.enter_async_context(async_playwright())
        browser: Browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        stack.push_async_callback(browser.close)
        context = await browser.new_context(viewport={"width": 1400, "height": 900},
                                            timezone_id="Europe/Paris")
        page = await context.new_page()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        out = Setup(url, engine, page)
        page.on("pageerror", lambda exc: out.problems.append(f"uncaught: {exc}"))
        out.runs["orphaned"] = run.id
        out.runs["sleeping"] = await out.run_of(await engine.send("shop/nap", {}))
        out.runs["waiting"] = await out.run_of(await engine.send("shop/order", {"order": 7}))
        out.runs["signal"] = await out.run_of(await engine.send("shop/signal", {}))
        out.runs["invoking"] = await out.run_of(await engine.send("shop/parent", {}))
        out.runs["retrying"] = await out.run_of(await engine.send("shop/flaky", {}))
        for _ in range(2):      # the limit and its burst
            await engine.send("shop/slowly", {"user": "ada"})
        out.runs["throttled"] = await out.run_of(await engine.send("shop/slowly", {"user": "ada"}))
        out.runs["holding"] = await out.run_of(await engine.send("shop/single", {}))
        out.runs["blocked"] = await out.run_of(await engine.send("shop/single", {}))

        async def orphaned() -> bool:
            found = await engine.get_run(run.id)
            return found is not None and any(w.startswith("orphaned") for w in found.warnings)
        await until(orphaned, "the ghost run to be orphaned")
        yield out


STATES = [
    ("sleeping", re.compile(r"Sleeping until \d\d:\d\d:\d\d (CET|GMT\+1) · step nap")),
    ("waiting", "Waiting for event shop/approved matching data.order if async.data.ok == true"),
    ("signal", "Waiting for signal go-signal, expires"),
    ("invoking", "Waiting for invoked run"),
    ("retrying", re.compile(r"Retrying: attempt [234] of 4 at .* · step charge · last error "
                            r"ValueError: database is warming up")),
    ("throttled", "Throttled (key ada) until"),
    ("blocked", "Waiting for a concurrency slot"),
    ("orphaned", "Orphaned: no worker defines shop/ghost"),
]


@pytest.mark.parametrize(("state", "text"), STATES, ids=[s for s, _ in STATES])
async def test_the_runs_list_and_the_run_page_say_what_the_run_is_doing(
        setup: Setup, state: str, text: str | re.Pattern[str]) -> None:
    run_id = setup.runs[state]
    page = await setup.open("/dashboard/runs")
    await expect(page.locator(f"tr[data-run-id='{run_id}'] .state")).to_contain_text(text)
    page = await setup.open(f"/dashboard/runs/{run_id}")
    await expect(page.locator(".page-header + .state")).to_contain_text(text)
    assert setup.problems == []


async def test_an_invoking_run_links_the_run_it_waits_for(setup: Setup) -> None:
    [child] = [r for r in await setup.engine.runs(function_id="nap")
               if r.parent_run_id == setup.runs["invoking"]]
    page = await setup.open(f"/dashboard/runs/{setup.runs['invoking']}")
    await page.locator(".state a").click()
    await expect(page).to_have_url(f"{setup.url}/dashboard/runs/{child.id}")


async def test_the_timeline_shows_attempts_backoff_sleeps_and_now(setup: Setup) -> None:
    page = await setup.open(f"/dashboard/runs/{setup.runs['retrying']}")
    charge = page.locator(".waterfall .wf-row[data-step='charge']")
    await expect(charge.locator(".wf-attempt-failed").first).to_be_visible()
    await expect(charge.locator(".wf-gap").last).to_be_visible()    # the backoff to the next try
    await expect(page.locator(".waterfall .wf-row[data-step='lookup'] .wf-completed")
                 ).to_have_count(1)
    await expect(page.locator(".waterfall .wf-now")).to_have_count(1)
    # The error once, its attempts folded under it.
    step = page.locator("li.step[data-step='charge']")
    await expect(step.locator(".error-box")).to_have_count(1)
    await expect(step.locator("details.failures")).not_to_have_attribute("open", "")
    if os.environ.get("STEPWELL_SCREENSHOTS"):
        await page.screenshot(path=str(SHOTS / "dashboard-run-retrying.png"), full_page=True)

    page = await setup.open(f"/dashboard/runs/{setup.runs['sleeping']}")
    nap = page.locator(".waterfall .wf-row[data-step='nap'] .wf-sleeping")
    await expect(nap).to_have_count(1)
    width = await nap.evaluate("el => el.getBoundingClientRect().width")
    track = await page.locator(".waterfall .wf-row[data-step='nap'] .wf-track").evaluate(
        "el => el.getBoundingClientRect().width")
    assert width > track * 0.9          # an hour's sleep to its due time fills the axis
    queued = page.locator(".meta time").first
    await expect(queued).to_have_attribute("title", re.compile(r"Z \(UTC\)$"))
    await expect(queued).to_have_text(re.compile(r"(CET|GMT\+1)$"))


async def test_runs_are_found_by_state_id_event_data_and_pages(setup: Setup) -> None:
    page = await setup.open("/dashboard/runs")
    await page.select_option("#filter-status", "waiting")
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(page).to_have_url(f"{setup.url}/dashboard/runs?status=waiting")
    await page.select_option("#filter-status", "")
    await page.fill("#filter-query", "event.data.order == 7")
    await page.press("#filter-query", "Enter")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-run-id", setup.runs["waiting"])
    if os.environ.get("STEPWELL_SCREENSHOTS"):
        await page.fill("#filter-query", "")
        await page.press("#filter-query", "Enter")
        await expect(page.locator(f"tr[data-run-id='{setup.runs['sleeping']}']")).to_be_visible()
        await page.screenshot(path=str(SHOTS / "dashboard-runs.png"), full_page=True)
    await page.fill("#filter-query", "")
    await page.fill("#filter-id", setup.runs["retrying"])
    await page.press("#filter-id", "Enter")
    await expect(rows).to_have_count(1)
    await page.fill("#filter-id", "")
    await page.press("#filter-id", "Enter")
    # More runs than a page (50) holds: 55 quick ones, then Older / Newer.
    for n in range(55):
        await setup.engine.send("shop/two", {"n": n})
    await page.select_option("#filter-function", "shop/two")
    await expect(rows).to_have_count(50)
    await page.click("#older-page")
    await expect(rows).to_have_count(5)
    await page.click("#newer-page")
    await expect(rows).to_have_count(50)
    assert setup.problems == []


async def test_rerun_from_a_step_with_edited_input_resend_invoke_and_bulk_cancel(
        setup: Setup) -> None:
    engine = setup.engine
    done = await setup.run_of(await engine.send("shop/two", {"n": 1}))
    await engine.wait(done, timeout=10)
    page = await setup.open(f"/dashboard/runs/{done}")
    await page.click("#rerun-run")
    await page.select_option("#rerun-step", "b")
    await page.click("#rerun-confirm")
    link = page.locator("#rerun-link")
    await expect(link).to_be_visible()
    rerun = await engine.wait(str(await link.text_content()), timeout=10)
    assert rerun.replay_of == done and rerun.output == [1, 2]

    await page.click(".resend-event")
    body = page.locator("#resend-body")
    await body.fill('{"name": "shop/two", "data": {"n": 41}}')
    await page.click("#resend-confirm")
    resent = page.locator("#resent-link")
    await expect(resent).to_be_visible()
    copy = await setup.run_of(await resent.text_content())
    assert (await engine.wait(copy, timeout=10)).output == [41, 42]

    page = await setup.open("/dashboard/functions")
    await page.locator("tr[data-function='shop/two'] button.invoke").click()
    await page.fill("#invoke-data", '{"n": 9}')
    await page.click("#invoke-confirm")
    invoked = page.locator("#invoked-link")
    await expect(invoked).to_be_visible()
    assert (await engine.wait(str(await invoked.text_content()), timeout=10)).output == [9, 10]

    naps = [await setup.run_of(await engine.send("shop/nap", {"batch": "b"})) for _ in range(2)]
    page = await setup.open("/dashboard/runs?function=shop/nap&query=event.data.batch == \"b\"")
    await expect(page.locator("tbody tr")).to_have_count(2)
    await page.click("#bulk-cancel")
    await expect(page.locator("#bulk")).to_contain_text("whose event matches")
    for run_id in naps:
        assert (await engine.get_run(run_id)).status == "running"  # type: ignore[union-attr]
    await page.click("#bulk-confirm")
    await expect(page.locator(".flash")).to_contain_text("Cancelled 2 runs.")
    for run_id in naps:
        assert (await engine.wait(run_id, timeout=10)).status == "cancelled"
    # The sleeping run of the same function without the batch tag is untouched.
    assert (await engine.get_run(setup.runs["sleeping"])).status == "running"  # type: ignore[union-attr]
    assert setup.problems == []


async def test_a_function_page_shows_what_flow_control_holds_back(setup: Setup) -> None:
    engine = setup.engine
    page = await setup.open("/dashboard/functions")
    await page.locator("tr[data-function='shop/digest'] a.fn").click()
    await expect(page).to_have_url(f"{setup.url}/dashboard/functions/shop/digest")
    held = page.locator("[data-section='held']")
    await expect(held).to_contain_text("Nothing is held back")
    # Events arriving while the page is open appear with its live refresh.
    await engine.send("shop/note", {"user": "ada"})
    ada = await engine.send("shop/note", {"user": "ada"})
    bob = await engine.send("shop/note", {"user": "bob"})
    for team, count in (("red", 3), ("blue", 1)):
        for _ in range(count):
            await engine.send("shop/item", {"team": team})
    row = held.locator("tr[data-kind='debounce'][data-key='ada']")
    await expect(row.locator(".key")).to_have_text("ada")
    await expect(row.locator(".events")).to_have_text("1")
    await expect(row).to_contain_text(str(ada))         # the event the run will get
    fires = row.locator(".fires time")
    await expect(fires).to_have_text(
        re.compile(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d (CET|GMT\+1)$"))
    await expect(fires).to_have_attribute("title", re.compile(r"Z \(UTC\)$"))
    await expect(row.locator(".fires")).to_contain_text(re.compile(r"in (59m|1h)"))
    await expect(held.locator("tr[data-key='bob']")).to_contain_text(str(bob))
    if os.environ.get("STEPWELL_SCREENSHOTS"):
        await page.screenshot(path=str(SHOTS / "dashboard-function-held.png"), full_page=True)

    page = await setup.open("/dashboard/functions/shop/bundle")
    red = page.locator("[data-section='held'] tr[data-kind='batch'][data-key='red']")
    await expect(red.locator(".events")).to_have_text("3")
    await expect(page.locator("[data-section='held'] tr[data-key='blue'] .events")
                 ).to_have_text("1")
    page = await setup.open("/dashboard/functions/shop/two")
    await expect(page.locator("[data-section='held'] .empty")).to_contain_text(
        "no batch or debounce setting")
    page = await setup.open("/dashboard/functions/shop/nope")
    await expect(page.locator("h1")).to_have_text("Function not found")
    await expect(page.locator(".not-found")).to_contain_text("no function 'shop/nope'")
    assert setup.problems == []
