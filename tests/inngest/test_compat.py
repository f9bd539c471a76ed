"""Behaviours of the Inngest dev server that official-SDK apps rely on (issue 11), checked with
real apps on the Python SDK (under FastAPI and under Flask) and on the TypeScript SDK (v4 and
v3 under `inngest/node`), on SQLite and Postgres. Their function ids hold slashes, unicode and
punctuation. The apps are `py_compat/` and `ts_app/compat_*.mjs`.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sdk_harness import (
    HERE,
    TS_APP_DIR,
    AppSpec,
    SdkHarness,
    free_port,
    fresh_database,
    start_app,
    start_harness,
    start_serve,
    typescript_app_spec,
    unique,
    wait_for,
)
from upstream import API_KEY, Upstream

PY_COMPAT = HERE / "py_compat"
CRAZY_ID = "crazy%$^&*(_+{|:<?☃️"
APPS = ["py-fastapi", "py-flask", "ts-v4", "ts-v3"]


def compat_spec(kind: str, extra_env: tuple[tuple[str, str], ...] = ()) -> AppSpec:
    if kind.startswith("py-"):
        framework = kind.removeprefix("py-")
        app_id = f"py-compat-{framework}"
        return AppSpec(app_id, [sys.executable, str(PY_COMPAT / f"{framework}_app.py"), "0"],
                       PY_COMPAT, (("COMPAT_APP_ID", app_id), *extra_env))
    version = kind.removeprefix("ts-")
    base = typescript_app_spec(version)   # checks node and the npm package
    app_id = f"ts-compat-{version}"
    return AppSpec(app_id, [base.cmd[0], str(TS_APP_DIR / f"compat_{version}.mjs"), "0"],
                   TS_APP_DIR, (("COMPAT_APP_ID", app_id), *extra_env))


@pytest.fixture(scope="module", params=APPS)
def app_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def compat(app_kind: str, db_backend: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    spec = compat_spec(app_kind)
    tmp = tmp_path_factory.mktemp(f"{spec.app_id}-{db_backend}")
    with fresh_database(db_backend, tmp) as db_url:
        yield from start_harness(spec, db_url, tmp)


def failed_events(sdk: SdkHarness, run_id: str) -> list[dict[str, Any]]:
    return [e for e in sdk.events_named("inngest/function.failed")
            if e["data"].get("run_id") == run_id]


# --- 1. function ids ------------------------------------------------------------------------


def test_function_ids_with_slashes_unicode_and_punctuation(compat: SdkHarness) -> None:
    registered = set(compat.synced["functions"])
    for local in ("billing/charge", CRAZY_ID, "parallel_steps/child", "retry/per-unit"):
        assert compat.fn(local) in registered, registered
    key = unique("charge")
    run = compat.finish(compat.send_one("compat/charge", {"amount": 12, "key": key}),
                        "billing/charge")
    assert run["status"] == "Completed", run
    assert run["output"] == {"charged": 12}
    assert run["function_id"] == compat.fn("billing/charge")
    # The REST API finds the run by the id with its slash (sent %-encoded in the query).
    listed = compat.client.get(f"{compat.url}/v1/runs",
                               params={"function_id": compat.fn("billing/charge")}).json()
    assert run["run_id"] in [r["run_id"] for r in listed["data"]]
    crazy = compat.finish(compat.send_one("compat/crazy", {"who": "☃"}), CRAZY_ID)
    assert crazy["status"] == "Completed", crazy
    assert crazy["output"] == {"said": "hello ☃", "fn": CRAZY_ID}
    # Invoking a function whose id holds a slash.
    invoked = compat.finish(compat.send_one("compat/invoke", {"amount": 5}), "invoke/charge")
    assert invoked["status"] == "Completed", invoked
    assert invoked["output"] == {"charged": 5}


def test_refused_sync_names_the_function_everywhere(tmp_path: Path) -> None:
    """One function stepwell refuses (a cron that is not one) refuses the sync, and the server
    log, `stepwell serve -u` and the dashboard's Apps page say which function and why (the
    Python SDK itself answers the sync with 200 and only logs it)."""
    spec = compat_spec("py-fastapi", (("COMPAT_BAD_FUNCTION", "1"),))
    port = free_port()
    app = start_app(spec, f"http://127.0.0.1:{port}")
    bad = "reports/nightly ☾"
    try:
        server = start_serve(f"sqlite:///{tmp_path / 'stepwell.db'}", tmp_path, port=port,
                             sync_urls=(f"{app.url}/api/inngest",))
        try:
            line = wait_for(lambda: [ln for ln in server.output().splitlines()
                                     if "could not sync" in ln], "serve -u to report",
                            context=server.tail)[0]
            assert bad in line and "cron" in line, line
            assert any("sync refused" in ln and bad in ln for ln in server.output().splitlines()
                       if "could not sync" not in ln), server.tail()
            apps = httpx.get(f"{server.url}/v1/apps", timeout=10).json()["data"]
            [refused] = [a for a in apps if a["url"].startswith(app.url)]
            assert bad in refused["error"] and "cron" in refused["error"], refused
            from playwright.sync_api import sync_playwright

            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
                try:
                    page = browser.new_page()
                    page.goto(f"{server.url}/dashboard/apps")
                    error = page.locator(".sync-error")
                    error.wait_for(timeout=15_000)
                    assert bad in error.inner_text() and "cron" in error.inner_text()
                finally:
                    browser.close()
        finally:
            server.stop()
    finally:
        app.stop()


# --- 2. retry attempts per unit of work -------------------------------------------------------


def test_attempts_are_counted_per_unit_of_work(compat: SdkHarness) -> None:
    """retries=1: the code after step one fails once and the code after step two fails once;
    each is its own unit of work, retried from attempt 0, so the run completes."""
    key = unique("units")
    run = compat.finish(compat.send_one("compat/units", {"key": key}), "retry/per-unit",
                        deadline_s=60)
    assert run["status"] == "Completed", run
    seen = [(e["kind"], e["attempt"]) for e in compat.ledger(key=key)
            if e["kind"].startswith("unit-")]
    # Code outside steps runs again on every call: the call after step two replays unit a
    # with that call's attempt, which starts again at 0.
    assert seen == [("unit-a", 0), ("unit-a", 1), ("unit-a", 0), ("unit-b", 0), ("unit-a", 1),
                    ("unit-b", 1)], seen


# --- 4. a failed run's output is the SDK's error body -------------------------------------------


def test_failed_run_output_is_the_sdk_error_body(compat: SdkHarness) -> None:
    run = compat.finish(compat.send_one("compat/nonretriable", {}), "errors/non-retriable")
    assert run["status"] == "Failed", run
    output = run["output"]
    assert output["name"] in ("NonRetriableError", "Error"), output   # TS v3 sends "Error"
    assert output["message"] == "the card was declined", output
    assert "error" not in output, output          # not reshaped
    assert "stack" in output and (output["stack"] is None or isinstance(output["stack"], str))
    if compat.app_id.startswith("py-"):
        assert output["code"] == "non_retriable_error", output
    # The inngest/function.failed event keeps Inngest's shape.
    [failed] = wait_for(lambda: failed_events(compat, run["run_id"]), "function.failed")
    assert failed["data"]["error"]["error"].startswith("invalid status code: "), failed
    assert failed["data"]["error"]["message"] == "the card was declined"


# --- 5. x-inngest-no-retry on a StepError -------------------------------------------------------


def test_non_retriable_step_error_fails_the_step_at_once(compat: SdkHarness) -> None:
    key = unique("noretry")
    run = compat.finish(compat.send_one("compat/noretry", {"key": key}), "steps/no-retry")
    assert run["status"] == "Completed", run
    assert run["output"]["caught"] in (
        "this step must not be retried",      # TypeScript: NonRetriableError in the step
        "Nested steps are not supported."), run   # Python: a coded, non-retriable error
    attempts = [e["attempt"] for e in compat.ledger("refuse", key)]
    assert attempts == [0], attempts       # retries=3, yet the step ran once


# --- 6. parallelMode "race" ------------------------------------------------------------------


# TypeScript SDK v3 has no race mode (`group.parallel` is v4).
@pytest.mark.parametrize("app_kind", ["py-fastapi", "py-flask", "ts-v4"], indirect=True)
def test_race_mode_goes_on_while_the_slow_branch_runs(compat: SdkHarness) -> None:
    key = unique("race")
    run = compat.finish(compat.send_one("compat/race", {"key": key}), "parallel_steps/race",
                        deadline_s=60)
    assert run["status"] == "Completed", run
    [slow] = wait_for(lambda: compat.ledger("slow", key), "the slow branch to finish",
                      deadline_s=40)
    assert slow["saw_fast_2"] is True, compat.ledger(key=key)


# --- 7. a run-ending error from a targeted call ----------------------------------------------


def test_run_ending_error_of_a_targeted_call_fails_the_run(compat: SdkHarness) -> None:
    run = compat.finish(compat.send_one("compat/unexpected", {}), "parallel_steps/child",
                        deadline_s=60)
    assert run["status"] == "Failed", run
    if compat.app_id.startswith("py-"):
        assert run["output"]["code"] == "step_unexpected", run


# --- 10. smaller ones ------------------------------------------------------------------------


def test_invoke_of_an_unknown_function_fails_with_inngests_error(compat: SdkHarness) -> None:
    run = compat.finish(compat.send_one("compat/missing", {}), "invoke/missing")
    assert run["status"] == "Completed", run
    target = compat.fn("does/not-exist")
    assert run["output"]["message"] == f"could not find function with ID: {target}", run
    assert run["output"]["name"] in ("Error", "StepError"), run


def test_ai_gateway_sends_inngests_header_names(compat: SdkHarness, upstream: Upstream) -> None:
    run = compat.finish(compat.send_one("compat/ai", {
        "key": API_KEY, "base_url": f"{upstream.url}/anthropic/v1/"}), "ai/anthropic")
    assert run["status"] == "Completed", run
    assert run["output"]["content"][0]["text"] == "hello", run
    names = upstream.seen("/anthropic/v1/messages")[-1]["header_names"]
    assert "X-Api-Key" in names and "Content-Type" in names, names


def test_dev_lists_registered_configs_with_steps(compat: SdkHarness) -> None:
    info = compat.client.get(f"{compat.url}/dev").json()
    by_slug = {f["slug"]: f for f in info["functions"]}
    charge = by_slug[compat.fn("billing/charge")]
    assert charge["name"] and charge["triggers"] == [{"event": "compat/charge"}], charge
    [step] = charge["steps"]
    assert step["id"] == "step" and "fnId=" in step["uri"], step
    assert httpx.URL(step["uri"]).params["fnId"] == compat.fn("billing/charge"), step
    assert by_slug[compat.fn("retry/per-unit")]["steps"][0]["retries"] == 1   # Go: a number


def test_bulk_cancellation_of_an_sdk_function(compat: SdkHarness) -> None:
    run = compat.run_of(compat.send_one("compat/wait", {}), "cancel/me")
    compat.wait_run(run["run_id"], {"Running"})
    before = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)).isoformat()
    reply = compat.client.post(f"{compat.url}/v1/cancellations", json={
        "app_id": compat.app_id, "function_id": compat.fn("cancel/me"),
        "started_before": before})
    assert reply.status_code == 200, reply.text
    assert run["run_id"] in reply.json()["data"]["run_ids"], reply.text
    assert compat.wait_run(run["run_id"])["status"] == "Cancelled"


def test_event_with_an_integer_beyond_2_pow_53_is_refused(compat: SdkHarness) -> None:
    reply = compat.client.post(f"{compat.url}/e/key", json=[
        {"name": "compat/charge", "data": {"amount": 2**53 + 1}}])
    assert reply.status_code == 400, reply.text
    assert "data.amount" in reply.json()["error"] and "2^53" in reply.json()["error"]
    # The server goes on: the next event runs.
    run = compat.finish(compat.send_one("compat/charge", {"amount": 2**53 - 1}),
                        "billing/charge")
    assert run["output"] == {"charged": 2**53 - 1}, run
