"""Checkpointing with the official TypeScript SDK v4 (`ts_app/app_checkpoint.mjs`), on SQLite and
Postgres, and the plain protocol it falls back to (the same app with `checkpointing: false`,
and the v3 app, which does not checkpoint unless asked).

With checkpointing the SDK runs a run's steps inside one call and POSTs each result to
`/v1/checkpoint/{run}/async`; the server's counters (`/metrics`: requests made to apps,
checkpoints applied) show which protocol a run took, and the app's ledger shows each step body
ran exactly as often as it should (once, or once per retry).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sdk_harness import (
    TS_APP_DIR,
    AppSpec,
    SdkHarness,
    fresh_database,
    start_harness,
    typescript_app_spec,
    unique,
    wait_for,
)


def checkpoint_app(checkpointing: bool) -> AppSpec:
    node = shutil.which("node")
    assert node is not None, "the TypeScript SDK tests need Node.js >= 20 on PATH"
    spec = typescript_app_spec("v4")          # checks the npm packages are installed
    app = [node, str(TS_APP_DIR / "app_checkpoint.mjs"), "0"]
    if checkpointing:
        return AppSpec("ts-ckpt", app, spec.cwd)
    return AppSpec("ts-plain", ["env", "CHECKPOINTING=0", *app], spec.cwd)


@pytest.fixture(scope="module")
def ckpt(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """`stepwell serve` + the v4 checkpointing app (checkpointing on, the v4 default)."""
    tmp = tmp_path_factory.mktemp(f"ckpt-{db_backend}")
    with fresh_database(db_backend, tmp) as db_url:
        yield from start_harness(checkpoint_app(True), db_url, tmp)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """The same app with `checkpointing: false`."""
    tmp = tmp_path_factory.mktemp("ckpt-off")
    with fresh_database("sqlite", tmp) as db_url:
        yield from start_harness(checkpoint_app(False), db_url, tmp)


@pytest.fixture(scope="module")
def v3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    tmp = tmp_path_factory.mktemp("ckpt-v3")
    with fresh_database("sqlite", tmp) as db_url:
        yield from start_harness(typescript_app_spec("v3"), db_url, tmp)


def counters(sdk: SdkHarness) -> dict[str, float]:
    """The server's `stepwell_sdk_calls_total` and `stepwell_sdk_checkpoints_total`."""
    text = sdk.client.get(f"{sdk.url}/metrics").text
    out = {}
    for name in ("calls", "checkpoints"):
        match = re.search(rf"^stepwell_sdk_{name}_total (\S+)$", text, re.M)
        assert match, f"/metrics has no stepwell_sdk_{name}_total:\n{text[:2000]}"
        out[name] = float(match.group(1))
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def kinds(sdk: SdkHarness, key: str) -> list[str]:
    return [e["kind"] for e in sdk.ledger(key=key)]


def run_three(sdk: SdkHarness) -> tuple[dict[str, Any], dict[str, float], list[str]]:
    key = unique("three")
    before = counters(sdk)
    run = sdk.finish(sdk.send_one("ckpt/three", {"key": key}), "three-steps")
    return run, delta(before, counters(sdk)), kinds(sdk, key)


# --- checkpointing on ---------------------------------------------------------------------


def test_three_steps_run_in_one_call_with_three_checkpoints(ckpt: SdkHarness) -> None:
    run, used, ledger = run_three(ckpt)
    assert run["status"] == "Completed", run
    assert run["output"] == {"a": 1, "b": 2, "c": {"sum": 3, "nothing": None}}
    assert ledger == ["a", "b", "c"]                       # each body once
    assert used == {"calls": 1, "checkpoints": 3}, used    # one call, a checkpoint per step
    assert [s["status"] for s in run["steps"]] == ["completed"] * 3, run["steps"]
    assert [s["output"] for s in run["steps"]] == [1, 2, {"sum": 3, "nothing": None}]


def test_sleep_between_checkpointed_steps(ckpt: SdkHarness) -> None:
    key = unique("sleepy")
    before = counters(ckpt)
    run = ckpt.finish(ckpt.send_one("ckpt/sleepy", {"key": key}), "sleepy")
    assert run["status"] == "Completed", run
    assert run["output"] == ["before", "after"]
    assert kinds(ckpt, key) == ["before", "after"]
    # Call 1 checkpoints `before` and reports the sleep; call 2 checkpoints `after`.
    assert delta(before, counters(ckpt)) == {"calls": 2, "checkpoints": 2}


def test_failed_step_is_retried_and_the_run_goes_on(ckpt: SdkHarness) -> None:
    key = unique("flaky")
    run = ckpt.finish(ckpt.send_one("ckpt/flaky", {"key": key}), "flaky")
    assert run["status"] == "Completed", run
    assert run["output"] == {"first": "first", "shaky": "ok after 2", "last": "last"}
    assert kinds(ckpt, key) == ["first", "shaky", "shaky", "shaky", "last"]
    shaky = next(s for s in run["steps"] if s["id"] == "shaky")
    assert shaky["attempts"] == 3, shaky


def test_step_out_of_retries_fails_the_run(ckpt: SdkHarness) -> None:
    key = unique("doomed")
    run = ckpt.finish(ckpt.send_one("ckpt/doomed", {"key": key}), "doomed")
    assert run["status"] == "Failed", run
    assert "broken for good" in str(run["output"]), run
    assert kinds(ckpt, key) == ["fine", "broken", "broken"]      # retries: 1


def test_parallel_steps_between_checkpointed_ones(ckpt: SdkHarness) -> None:
    key = unique("fan")
    run = ckpt.finish(ckpt.send_one("ckpt/fan-out", {"key": key}), "fan-out")
    assert run["status"] == "Completed", run
    assert run["output"] == {"tail": "head-left-right"}
    ledger = kinds(ckpt, key)
    assert sorted(ledger) == ["head", "left", "right", "tail"], ledger
    assert ledger[0] == "head" and ledger[-1] == "tail"


def test_cancelled_run_refuses_the_next_checkpoint(ckpt: SdkHarness) -> None:
    """A run cancelled while the SDK runs its steps inside one call: the next checkpoint gets
    409 (the call lost its lease), so that step's result is not stored and the SDK stops."""
    key = unique("held")
    run = ckpt.run_of(ckpt.send_one("ckpt/held", {"key": key}), "held")
    wait_for(lambda: "hold" in kinds(ckpt, key), "step `hold` to start", context=ckpt.logs)
    cancelled = ckpt.client.post(f"{ckpt.url}/v1/runs/{run['run_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    released = httpx.get(f"{ckpt.app.url}/api/inngest", params={"release": key}, timeout=5)
    assert released.status_code == 200
    final = ckpt.wait_run(run["run_id"])
    assert final["status"] == "Cancelled", final
    # The SDK halted at the refused checkpoint: `three` never ran, `hold` was never stored.
    wait_for(lambda: ckpt.get_run(run["run_id"]), "the run to be readable")
    assert "three" not in kinds(ckpt, key)
    names = {s["id"]: s["status"] for s in ckpt.get_run(run["run_id"])["steps"]}
    assert names.get("one") == "completed" and "hold" not in names, names


def test_checkpoint_api_validates_its_input(ckpt: SdkHarness) -> None:
    run, _, _ = run_three(ckpt)
    url = f"{ckpt.url}/v1/checkpoint/{run['run_id']}/async"
    step = {"op": "StepRun", "id": "x" * 40, "data": 1}
    stale = ckpt.client.post(url, json={"run_id": run["run_id"], "qi_id": "12.nobody:1:ab",
                                        "steps": [step]})
    assert stale.status_code == 409, stale.text          # no such lease: the SDK must stop
    assert "no longer holds the run" in stale.json()["error"]
    bad_ref = ckpt.client.post(url, json={"steps": [step]})
    assert bad_ref.status_code == 400 and "qi_id" in bad_ref.json()["error"], bad_ref.text
    bad_op = ckpt.client.post(url, json={"qi_id": "1.x", "steps": [{"op": "Sleep",
                                                                       "id": "s", "name": "1s"}]})
    assert bad_op.status_code == 400 and "Sleep" in bad_op.json()["error"], bad_op.text
    sync = ckpt.client.post(f"{ckpt.url}/v1/checkpoint", json={"run_id": "r"})
    assert sync.status_code == 400 and "durable endpoints" in sync.json()["error"], sync.text
    # Nothing was stored by the refused checkpoints.
    assert len(ckpt.get_run(run["run_id"])["steps"]) == 3


def test_experiment_and_step_metadata_are_memoized(ckpt: SdkHarness) -> None:
    """`group.experiment` selects its variant in a memoized step (a StepRun with
    opts.type "group.experiment"), and `step.metadata().set()` is a step too: across the
    sleep's replay neither runs again and the chosen variant stays chosen."""
    key = unique("exp")
    run = ckpt.finish(ckpt.send_one("ckpt/experiment", {"key": key}), "try-variants")
    assert run["status"] == "Completed", run
    assert run["output"] == {"chosen": {"result": "fresh", "variant": "fresh", "experimentRef": {
        "experimentName": "checkout-flow", "variant": "fresh"}}, "done": "after"}
    variants = [e["variant"] for e in ckpt.ledger("variant", key)]
    assert variants == ["fresh"], variants
    assert kinds(ckpt, key) == ["variant", "after-experiment"]
    names = [s["id"] for s in run["steps"]]
    assert {"tag-run", "checkout-flow", "new-checkout", "settle",
            "after-experiment"} <= set(names), names


def test_metadata_for_another_run_fails_the_step_clearly(ckpt: SdkHarness) -> None:
    """Metadata the SDK must send through the API (aimed at another run) is not supported:
    the step fails at once with a message naming the route, never a hang or a 500."""
    other, _, _ = run_three(ckpt)
    run = ckpt.finish(ckpt.send_one("ckpt/tag-other", {"otherRun": other["run_id"]}),
                      "tag-other")
    assert run["status"] == "Failed", run
    assert "POST /v1/runs/{run_id}/metadata" in str(run["output"]), run["output"]
    assert "not supported by stepwell" in str(run["output"])
    direct = ckpt.client.post(f"{ckpt.url}/v1/runs/{other['run_id']}/metadata",
                              json={"target": {"run_id": other["run_id"]}, "metadata": []})
    assert direct.status_code == 400 and "not supported" in direct.json()["error"]


# --- REST v2 rerun ---------------------------------------------------------------------------


def test_v2_rerun_from_a_step_with_edited_input(ckpt: SdkHarness) -> None:
    key = unique("priced")
    first = ckpt.finish(ckpt.send_one("ckpt/priced", {"key": key, "qty": 2}), "priced")
    assert first["output"] == {"price": 10}, first
    rerun = ckpt.client.post(f"{ckpt.url}/v2/runs/{first['run_id']}/rerun",
                             json={"fromStep": {"stepId": "price", "input": [7]}})
    assert rerun.status_code == 200, rerun.text
    body = rerun.json()
    assert set(body) == {"data", "metadata"} and "fetchedAt" in body["metadata"], body
    new_id = body["data"]["runId"]
    assert new_id != first["run_id"]
    second = ckpt.wait_run(new_id)
    assert second["status"] == "Completed", second
    assert second["output"] == {"price": 35}, second          # base (5, copied) x 7
    # `base` was not run again; `price` ran with the edited input.
    assert [e.get("qty") for e in ckpt.ledger(key=key)] == [None, 2, 7]
    assert [s["id"] for s in second["steps"]] == ["base", "price"], second["steps"]
    # Under /api/v2 as on Inngest; no body reruns from the start (every step again).
    again = ckpt.client.post(f"{ckpt.url}/api/v2/runs/{first['run_id']}/rerun")
    assert again.status_code == 200, again.text
    third = ckpt.wait_run(again.json()["data"]["runId"])
    assert third["output"] == {"price": 10}, third
    assert [e["kind"] for e in ckpt.ledger(key=key)] == ["base", "price", "price", "base",
                                                         "price"]


def test_v2_rerun_refuses_bad_requests(ckpt: SdkHarness) -> None:
    key = unique("priced")
    run = ckpt.finish(ckpt.send_one("ckpt/priced", {"key": key, "qty": 1}), "priced")
    url = f"{ckpt.url}/v2/runs/{run['run_id']}/rerun"
    cases = [
        ({"fromStep": {"stepId": "price", "input": {"qty": 3}}}, 400, "JSON array"),
        ({"fromStep": {"stepId": "nope"}}, 400, "has no step 'nope'"),
        ({"fromStep": {"input": [1]}}, 400, "Step ID is required"),
        ({"fromStep": "price"}, 400, "fromStep must be"),
        ({"from": "price"}, 400, "the body must be empty"),
    ]
    for body, status, message in cases:
        response = ckpt.client.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"], (body, response.text)
    missing = ckpt.client.post(f"{ckpt.url}/v2/runs/01NOPE/rerun", json={})
    assert missing.status_code == 404, missing.text
    assert len(ckpt.ledger(key=key)) == 2          # nothing was rerun


# --- fallbacks: the plain protocol ------------------------------------------------------------


def test_checkpointing_disabled_uses_one_call_per_step(plain: SdkHarness) -> None:
    run, used, ledger = run_three(plain)
    assert run["status"] == "Completed", run
    assert run["output"] == {"a": 1, "b": 2, "c": {"sum": 3, "nothing": None}}
    assert ledger == ["a", "b", "c"]
    assert used == {"calls": 4, "checkpoints": 0}, used


def test_checkpointing_disabled_retries_and_parallel(plain: SdkHarness) -> None:
    key = unique("flaky")
    run = plain.finish(plain.send_one("ckpt/flaky", {"key": key}), "flaky")
    assert run["status"] == "Completed", run
    assert kinds(plain, key) == ["first", "shaky", "shaky", "shaky", "last"]
    key = unique("fan")
    run = plain.finish(plain.send_one("ckpt/fan-out", {"key": key}), "fan-out")
    assert run["output"] == {"tail": "head-left-right"}, run


def test_v3_app_keeps_the_plain_protocol(v3: SdkHarness) -> None:
    key = unique("cart")
    before = counters(v3)
    run = v3.finish(v3.send_one("shop/cart.checkout",
                                {"cartId": key, "items": [{"id": 1}, {"id": 2}]}),
                    "process-cart")
    assert run["status"] == "Completed", run
    # 2 items + 3 ticks = 5 steps: one call each, plus the call that returns the output.
    assert delta(before, counters(v3)) == {"calls": 6, "checkpoints": 0}
