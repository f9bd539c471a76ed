"""The official Inngest TypeScript SDK, v3 and v4 (`inngest` from npm, served with
`inngest/node`), running on `stepwell serve`.

The apps are `ts_app/app_v3.mjs` and `ts_app/app_v4.mjs` (every test runs against both); the
scenarios (shared with the Python suite) are in `sdk_scenarios.py`. See conftest.py for how the
server and the apps are started and synced.
"""

from __future__ import annotations

import pytest
import sdk_scenarios as scenario
import server_step_scenarios as server_steps
from sdk_harness import SdkHarness
from upstream import Upstream


@pytest.fixture
def sdk(ts_sdk: SdkHarness) -> SdkHarness:
    return ts_sdk


def test_sync_registers_every_function(sdk: SdkHarness) -> None:
    scenario.sync_registers_every_function(sdk)


def test_multi_step_sleep_and_wait_for_event(sdk: SdkHarness) -> None:
    scenario.multi_step_wait_for_event(sdk)


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


def test_step_fetch_and_ai_infer_are_performed_by_the_server(sdk: SdkHarness,
                                                             upstream: Upstream) -> None:
    server_steps.fetch_and_ai_infer(sdk, upstream)


def test_wait_for_signal_and_send_signal(sdk: SdkHarness) -> None:
    server_steps.wait_for_signal(sdk)


def test_production_mode_with_event_and_signing_keys(ts_sdk_production: SdkHarness) -> None:
    scenario.production_mode(ts_sdk_production)
