"""examples/fastapi_app end to end: a real uvicorn server, events sent from a FastAPI handler
through the engine dependency, runs completed, stepwell's API and dashboard mounted at
/stepwell (the dashboard driven in headless Chromium), and `stepwell.Client` talking to the
mounted API from outside, with and without production keys."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from tests.integrations.servers import load_example, serve

import stepwell

CHROMIUM = os.environ.get("STEPWELL_CHROMIUM", "/usr/bin/chromium")
DEADLINE_S = 30.0


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("STEPWELL_DB", f"sqlite:///{tmp_path / 'app.db'}")
    monkeypatch.delenv("INNGEST_SIGNING_KEY", raising=False)
    monkeypatch.delenv("INNGEST_EVENT_KEY", raising=False)
    yield load_example("fastapi_app/main.py", "_stepwell_fastapi_example")


def poll_completed(base: str, event_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        runs = httpx.get(f"{base}/orders/{event_id}").json()["runs"]
        if runs and runs[0]["status"] == "completed":
            return dict(runs[0])
        assert time.monotonic() < deadline, f"run not completed: {runs}"
        time.sleep(0.02)


def test_a_handler_sends_an_event_and_its_run_completes(example: Any) -> None:
    with serve(example.api) as base:
        reply = httpx.post(f"{base}/orders", json={"order_id": 42, "total": 9.5})
        assert reply.status_code == 200, reply.text
        run = poll_completed(base, reply.json()["event_id"])
        # `receipt.total` in the handler: the step's pydantic model came back as a model.
        assert run["output"] == {"charged": 9.5, "order": 42}
        # The mounted REST API sees the same run.
        rest = httpx.get(f"{base}/stepwell/v1/runs/{run['id']}").json()["data"]
        assert (rest["status"], rest["output"]) == ("Completed", run["output"])
        # `/stepwell/` redirects into the mounted dashboard, not the host app's root.
        root = httpx.get(f"{base}/stepwell/", follow_redirects=False)
        assert root.headers["location"] == "/stepwell/dashboard/runs"
        # The mounted API keeps the server's Host check (DNS rebinding); the host app does not.
        foreign = {"host": "evil.example"}
        assert httpx.get(f"{base}/stepwell/v1/runs", headers=foreign).status_code == 421
        assert httpx.get(f"{base}/orders/{run['id']}", headers=foreign).status_code == 200


def test_the_client_sends_to_the_mounted_api_from_outside(example: Any) -> None:
    with serve(example.api) as base, stepwell.Client(f"{base}/stepwell") as client:
        event_id = client.send("shop/order.created", {"order_id": 7, "total": 1.25})
        assert isinstance(event_id, str)
        [run] = client.wait_for_runs(event_id, timeout=DEADLINE_S)
        assert (run.status, run.output) == ("completed", {"charged": 1.25, "order": 7})
        assert run.function_id == "shop/fulfil-order"
        assert client.get_run("no-such-run") is None
        with pytest.raises(stepwell.InvalidEventError, match="data"):
            client.send("shop/order.created", [1, 2])   # checked before it is sent
        with pytest.raises(stepwell.ClientError, match="no run") as missing:
            client.cancel("no-such-run")
        assert missing.value.status == 404


def test_the_mounted_api_keeps_its_auth(example: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "signkey-prod-" + secrets.token_hex(32)
    event_key = secrets.token_hex(16)
    sw = example.Stepwell(example.sw._engine, signing_key=key, event_key=event_key)
    app = example.FastAPI(lifespan=sw.lifespan)
    app.mount("/stepwell", sw.asgi_app())
    with serve(app) as base:
        assert httpx.get(f"{base}/stepwell/v1/runs").status_code == 401
        assert httpx.post(f"{base}/stepwell/e/wrong", json={"name": "a"}).status_code == 401
        with stepwell.Client(f"{base}/stepwell", event_key=event_key, signing_key=key) as client:
            event_id = client.send("shop/order.created", {"order_id": 1, "total": 2.0})
            [run] = client.wait_for_runs(str(event_id), timeout=DEADLINE_S)
            assert run.status == "completed"
        with stepwell.Client(f"{base}/stepwell", signing_key="signkey-prod-" + secrets.token_hex(32)
                             ) as wrong, pytest.raises(stepwell.ClientError) as refused:
            wrong.runs()
        assert refused.value.status == 401


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium")
def test_the_mounted_dashboard_works_under_its_prefix(example: Any) -> None:
    with serve(example.api) as base:
        event_id = httpx.post(f"{base}/orders", json={"order_id": 5, "total": 3.0}
                              ).json()["event_id"]
        run = poll_completed(base, event_id)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            failed: list[str] = []
            page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
            page.goto(f"{base}/stepwell/dashboard/runs")
            link = page.locator("a.run-link", has_text=run["id"])
            expect(link).to_be_visible(timeout=10_000)
            link.click()
            expect(page).to_have_url(f"{base}/stepwell/dashboard/runs/{run['id']}")
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=10_000)
            page.locator("nav.sidebar a[data-nav=events]").click()
            expect(page).to_have_url(f"{base}/stepwell/dashboard/events")
            expect(page.get_by_text("shop/order.created").first).to_be_visible(timeout=10_000)
            browser.close()
        assert failed == []
