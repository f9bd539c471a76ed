"""The official Inngest Python SDK (`inngest` 0.5.x under FastAPI) running on `stepwell serve`.

The app is `py_app/app.py`; the scenarios (shared with the TypeScript suite) are in
`sdk_scenarios.py`. See conftest.py for how the server and the app are started and synced.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sdk_scenarios as scenario
import server_step_scenarios as server_steps
from sdk_harness import (
    SdkHarness,
    free_port,
    python_app_spec,
    start_app,
    start_serve,
    wait_for,
)
from upstream import Upstream


@pytest.fixture
def sdk(py_sdk: SdkHarness) -> SdkHarness:
    return py_sdk


def test_sync_registers_every_function(sdk: SdkHarness) -> None:
    scenario.sync_registers_every_function(sdk)


def test_multi_step_sleep_and_wait_for_event(sdk: SdkHarness) -> None:
    scenario.multi_step_wait_for_event(sdk)


def test_step_ai_infer_is_performed_by_the_server(sdk: SdkHarness,
                                                  upstream: Upstream) -> None:
    server_steps.ai_infer(sdk, upstream)


def test_parallel_steps(sdk: SdkHarness) -> None:
    scenario.parallel_steps(sdk)


def test_loop_with_dynamic_step_ids(sdk: SdkHarness) -> None:
    scenario.loop_with_dynamic_ids(sdk)


def test_step_retries_then_succeeds(sdk: SdkHarness) -> None:
    scenario.retries_then_success(sdk)


def test_step_exhausts_retries_and_fails_the_run(sdk: SdkHarness) -> None:
    scenario.retries_exhausted(sdk)


def test_non_retriable_error_fails_at_once_and_runs_on_failure(sdk: SdkHarness) -> None:
    scenario.non_retriable_error_and_on_failure(sdk)


def test_rate_limit_skips_and_throttle_spreads(sdk: SdkHarness) -> None:
    scenario.rate_limit_and_throttle(sdk)


def test_debounce_runs_once_with_the_last_event(sdk: SdkHarness) -> None:
    scenario.debounce(sdk)


def test_priority_expression_with_triple_equals(sdk: SdkHarness) -> None:
    scenario.priority_expression(sdk)


def test_priority_orders_the_backlog(sdk: SdkHarness) -> None:
    scenario.priority_orders_the_backlog(sdk)


def test_cancel_on_event(sdk: SdkHarness) -> None:
    scenario.cancel_on_event(sdk)


def test_invoke_returns_the_child_output(sdk: SdkHarness) -> None:
    scenario.invoke_returns_child_output(sdk)


def test_send_event_triggers_another_function(sdk: SdkHarness) -> None:
    scenario.send_event_triggers_function(sdk)


def test_production_mode_with_event_and_signing_keys(py_sdk_production: SdkHarness) -> None:
    scenario.production_mode(py_sdk_production)


def test_serve_syncs_an_app_given_with_u(tmp_path: Path) -> None:
    """`stepwell serve -u <app url>` syncs the app on start-up, as `inngest dev -u` does."""
    spec = python_app_spec()
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    app = start_app(spec, server_url)  # first: the server syncs it as soon as it is up
    try:
        server = start_serve(f"sqlite:///{tmp_path / 'stepwell.db'}", tmp_path, port=port,
                             sync_urls=(f"{app.url}/api/inngest",))
        try:
            with httpx.Client(timeout=10) as client:

                def synced() -> bool:
                    response = client.get(f"{server.url}/v1/functions")
                    listed = response.text if response.status_code == 200 else ""
                    return '"py-app-load-dashboard"' in listed

                wait_for(synced, "the app to be synced from -u", context=server.tail)
                scenario.parallel_steps(SdkHarness(spec.app_id, server, app, client, {}))
        finally:
            server.stop()
    finally:
        app.stop()
