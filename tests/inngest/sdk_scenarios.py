"""The seed's examples, checked end to end against one SDK app on `stepwell serve`.

The Python app (`py_app/app.py`) and the TypeScript apps (`ts_app/app_v3.mjs`, `app_v4.mjs`)
implement the same functions with the same ids and event names, so every scenario here runs
unchanged against each of them (`test_python_sdk.py`, `test_typescript_sdk.py`). Each scenario
sends events through `POST /e/{key}`, follows the runs through the REST API
(`/v1/events/{id}/runs`, `/v1/runs/{id}`) until they are terminal, and checks real outcomes:
outputs, statuses, the step timeline, and the app's own ledger of what its steps did (which
shows memoization and retries from the SDK's side).

`sdk` is an `SdkHarness` (sdk_harness.py).
"""

from __future__ import annotations

import datetime
import itertools
import json
import time
from typing import Any

from sdk_harness import RUN_DEADLINE_S, TERMINAL, SdkHarness, step_names, unique, wait_for

EVERY_FUNCTION = [
    "process-order", "load-dashboard", "process-cart", "flaky-sync", "doomed-call",
    "risky-transfer", "risky-transfer-failure", "sync-crm", "index-product", "generate-report",
    "generate-report-queued", "nurture-lead", "compute-total", "checkout", "user-signup",
    "send-email",
]


def parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def duration_s(run: dict[str, Any]) -> float:
    return parse_time(run["ended_at"]) - parse_time(run["run_started_at"])


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in run.get("steps", []) if name in (s.get("name"), s.get("id"))]
    assert len(found) == 1, f"expected one step {name!r} on the timeline, got {run.get('steps')}"
    return found[0]


def wait_step(sdk: SdkHarness, run_id: str, name: str, status: str) -> dict[str, Any]:
    """Poll the run until step `name` shows `status` on its timeline (e.g. "waiting")."""

    def reached() -> dict[str, Any] | None:
        run = sdk.get_run(run_id)
        assert run["status"] not in TERMINAL, f"run ended before step {name} was {status}: {run}"
        for s in run.get("steps", []):
            if name in (s.get("name"), s.get("id")) and s.get("status") == status:
                return run
        return None

    return dict(wait_for(reached, f"step {name} of run {run_id} to be {status}",
                         context=sdk.logs))


# --- sync -------------------------------------------------------------------------------------


def sync_registers_every_function(sdk: SdkHarness) -> None:
    functions = set(sdk.synced["functions"])
    expected = {sdk.fn(f) for f in EVERY_FUNCTION}
    assert expected <= functions, f"missing: {sorted(expected - functions)}"
    # Syncing again is idempotent: same functions, nothing duplicated.
    again = sdk.client.post(f"{sdk.url}/v1/apps/sync",
                            json={"url": f"{sdk.app.url}/api/inngest"}, timeout=30)
    assert again.status_code == 200, again.text
    assert sorted(again.json()["data"]["functions"]) == sorted(sdk.synced["functions"])


# --- 1. multi-step: run, sleep, wait for event (match + timeout), conditional step ------------


def multi_step_wait_for_event(sdk: SdkHarness) -> None:
    paid_order, unpaid_order = unique("order"), unique("order")
    paid_event, unpaid_event = sdk.send(
        {"name": "shop/order.created", "data": {"orderId": paid_order, "userId": 7}},
        {"name": "shop/order.created", "data": {"orderId": unpaid_order, "userId": 8}},
    )
    paid = sdk.run_of(paid_event, "process-order")
    assert paid["function_id"] == sdk.fn("process-order")
    # Once the run waits for the payment, send a payment for another order (must not match)
    # and then the right one.
    wait_step(sdk, paid["run_id"], "wait-payment", "waiting")
    sdk.send(
        {"name": "shop/payment.success", "data": {"orderId": unique("order"), "amount": 1}},
        {"name": "shop/payment.success", "data": {"orderId": paid_order, "amount": 42}},
    )
    paid = sdk.wait_run(paid["run_id"])
    assert paid["status"] == "Completed", paid
    assert paid["output"] == {
        "user": {"id": 7, "name": "user-7"},
        "paid": True,
        "payment": {"name": "shop/payment.success",
                    "data": {"orderId": paid_order, "amount": 42}},
    }
    assert step_names(paid) == ["get-user", "wait-for-payment", "wait-payment"]

    unpaid = sdk.finish(unpaid_event, "process-order")
    assert unpaid["status"] == "Completed", unpaid
    assert unpaid["output"] == {"user": {"id": 8, "name": "user-8"}, "paid": False,
                                "payment": None}
    assert step_names(unpaid) == ["get-user", "wait-for-payment", "wait-payment", "cancel-order"]
    # 1s sleep + 4s wait timeout, on the real clock.
    assert duration_s(unpaid) >= 4.5, unpaid

    # Memoized: the SDK was called again after the sleep and after the wait, but each step body
    # ran once.
    assert len(sdk.ledger("get-user", paid_order)) == 1
    assert len(sdk.ledger("get-user", unpaid_order)) == 1
    assert sdk.ledger("cancel-order", paid_order) == []
    assert len(sdk.ledger("cancel-order", unpaid_order)) == 1


# --- 2. parallel steps ------------------------------------------------------------------------


def parallel_steps(sdk: SdkHarness) -> None:
    user = unique("user")
    run = sdk.finish(sdk.send_one("app/dashboard.load", {"userId": user}), "load-dashboard")
    assert run["status"] == "Completed", run
    assert run["output"] == {
        "user": {"id": user, "email": f"{user}@example.com"},
        "subscription": {"user": user, "plan": "pro"},
        "summary": f"{user}@example.com:pro",
    }
    names = step_names(run)
    assert sorted(names[:2]) == ["fetch-sub", "fetch-user"] and names[2:] == ["combine"], names
    for kind in ("fetch-user", "fetch-sub", "combine"):
        assert len(sdk.ledger(kind, user)) == 1, (kind, sdk.ledger(key=user))


# --- 3. loops ---------------------------------------------------------------------------------


def loop_with_dynamic_ids(sdk: SdkHarness) -> None:
    cart = unique("cart")
    run = sdk.finish(sdk.send_one("shop/cart.checkout", {
        "cartId": cart, "items": [{"id": 1}, {"id": 2}, {"id": 3}]}), "process-cart")
    assert run["status"] == "Completed", run
    assert run["output"] == {
        "processed": [{"id": 1, "done": True}, {"id": 2, "done": True}, {"id": 3, "done": True}],
        "ticks": [0, 1, 2],
    }
    names = step_names(run)
    assert names[:3] == ["process-item-1", "process-item-2", "process-item-3"], names
    assert len(names) == 6 and all(n.startswith("tick") for n in names[3:]), names
    assert [e["item"] for e in sdk.ledger("process-item", cart)] == [1, 2, 3]
    assert [e["n"] for e in sdk.ledger("tick", cart)] == [0, 1, 2]


# --- 4. retries, NonRetriableError, onFailure -------------------------------------------------


def retries_then_success(sdk: SdkHarness) -> None:
    key = unique("flaky")
    run = sdk.finish(sdk.send_one("app/flaky.sync", {"key": key}), "flaky-sync")
    assert run["status"] == "Completed", run
    assert run["output"] == {"result": {"ok": True, "attempt": 2}}
    assert [e["attempt"] for e in sdk.ledger("flaky-call", key)] == [0, 1, 2]
    assert step(run, "flaky-call")["attempts"] == 3


def retries_exhausted(sdk: SdkHarness) -> None:
    key = unique("doomed")
    run = sdk.finish(sdk.send_one("app/doomed.call", {"key": key}), "doomed-call")
    assert run["status"] == "Failed", run
    assert "upstream down" in text_of(run["output"]), run
    # retries: 1 -> two attempts of the step, then the run fails.
    assert [e["attempt"] for e in sdk.ledger("call-api", key)] == [0, 1]


def failure_handler_run(sdk: SdkHarness, failed_run_id: str) -> dict[str, Any]:
    """The run of `risky-transfer-failure` started by the failure of `failed_run_id`, terminal.

    Found the Inngest way: the `inngest/function.failed` event whose `data.run_id` is the failed
    run, then the runs of that event.
    """

    def failure_event() -> dict[str, Any] | None:
        for event in sdk.events_named("inngest/function.failed"):
            if event.get("data", {}).get("run_id") == failed_run_id:
                return event
        return None

    event = wait_for(failure_event, f"the inngest/function.failed event of {failed_run_id}",
                     context=sdk.logs)
    assert event["data"]["function_id"] == sdk.fn("risky-transfer"), event
    return sdk.finish(event.get("internal_id") or event["id"], "risky-transfer-failure")


def non_retriable_error_and_on_failure(sdk: SdkHarness) -> None:
    bad, good = unique("transfer"), unique("transfer")
    bad_event, good_event = sdk.send(
        {"name": "bank/transfer.init", "data": {"transferId": bad, "valid": False, "amount": 5}},
        {"name": "bank/transfer.init", "data": {"transferId": good, "valid": True, "amount": 3}},
    )
    failed = sdk.finish(bad_event, "risky-transfer")
    assert failed["status"] == "Failed", failed
    assert "Invalid payload" in text_of(failed["output"]), failed
    # NonRetriableError: the step ran once although the function has the default 4 retries.
    assert len(sdk.ledger("validate", bad)) == 1
    assert sdk.ledger("transfer", bad) == []

    handler = failure_handler_run(sdk, failed["run_id"])
    assert handler["status"] == "Completed", handler
    assert handler["output"]["transferId"] == bad
    assert handler["output"]["failedFunction"] == sdk.fn("risky-transfer")
    assert "Invalid payload" in handler["output"]["alert"], handler
    assert step_names(handler) == ["rollback-funds", "notify-admin"]
    assert len(sdk.ledger("rollback-funds", bad)) == 1
    assert len(sdk.ledger("notify-admin", bad)) == 1

    ok = sdk.finish(good_event, "risky-transfer")
    assert ok["status"] == "Completed", ok
    assert ok["output"] == {"transferred": 3}
    assert sdk.ledger("rollback-funds", good) == []


# --- 5. flow control --------------------------------------------------------------------------


def rate_limit_and_throttle(sdk: SdkHarness) -> None:
    busy, quiet = unique("user"), unique("user")
    events = [{"name": "crm/contact.updated", "data": {"userId": busy, "seq": n}}
              for n in range(12)]
    events.append({"name": "crm/contact.updated", "data": {"userId": quiet, "seq": 0}})
    ids = sdk.send(*events)
    runs = [sdk.finish(event_id, "sync-crm") for event_id in ids]
    busy_statuses = sorted(r["status"] for r in runs[:12])
    # rateLimit {limit: 10, period: "1m", key: "event.data.userId"}: the 11th and 12th event of
    # one user within the minute are skipped; another user has their own limit.
    assert busy_statuses == ["Completed"] * 10 + ["Skipped"] * 2, busy_statuses
    assert runs[12]["status"] == "Completed", runs[12]
    for r in runs:
        if r["status"] == "Completed":
            assert r["output"]["userId"] in (busy, quiet), r
    assert len(sdk.ledger("sync-crm", busy)) == 10
    # throttle {limit: 5, period: "1s"} (burst 1): `limit + burst` runs may start at once, the
    # rest one every 200ms, so the 11 starts span about 1s; unthrottled they would all start
    # within a few milliseconds.
    times = sorted(e["t"] for e in sdk.ledger("sync-crm", busy) + sdk.ledger("sync-crm", quiet))
    assert len(times) == 11
    assert times[-1] - times[0] >= 0.7, f"11 runs started within {times[-1] - times[0]:.2f}s"


def debounce(sdk: SdkHarness) -> None:
    product, other = unique("product"), unique("product")
    burst = [sdk.send_one("shop/product.updated", {"productId": product, "version": v})
             for v in (1, 2, 3)]
    last_sent = time.time()
    other_event = sdk.send_one("shop/product.updated", {"productId": other, "version": 9})

    def one_finished_run() -> dict[str, Any] | None:
        runs = {r["run_id"]: r for event_id in burst for r in sdk.event_runs(event_id)
                if r["status"] != "Skipped"}
        assert len(runs) <= 1, f"a debounced burst started several runs: {list(runs.values())}"
        run = next(iter(runs.values()), None)
        return run if run is not None and run["status"] in TERMINAL else None

    run = sdk.wait_run(wait_for(one_finished_run, "the debounced run",
                                RUN_DEADLINE_S, sdk.logs)["run_id"])
    assert run["status"] == "Completed", run
    # Only the last event of the burst, after the 2s quiet period.
    assert run["output"] == {"productId": product, "indexedVersion": 3}
    [indexed] = sdk.ledger("index-product", product)
    assert indexed["version"] == 3
    assert indexed["t"] - last_sent >= 1.5, indexed["t"] - last_sent
    other_run = sdk.finish(other_event, "index-product")
    assert other_run["output"] == {"productId": other, "indexedVersion": 9}


def priority_expression(sdk: SdkHarness) -> None:
    batch = unique("batch")
    enterprise, free = sdk.send(
        {"name": "report/generate", "data": {"plan": "enterprise", "batch": batch}},
        {"name": "report/generate", "data": {"plan": "free", "batch": batch}},
    )
    # `event.data.plan === 'enterprise' ? 100 : 0` is accepted and evaluated for both plans.
    assert sdk.finish(enterprise, "generate-report")["output"] == {
        "report": "report for enterprise"}
    assert sdk.finish(free, "generate-report")["output"] == {"report": "report for free"}


def priority_orders_the_backlog(sdk: SdkHarness) -> None:
    batch = unique("batch")
    plans = ["free", "free", "free", "enterprise"]
    ids = sdk.send(*({"name": "report/generate.queued",
                      "data": {"plan": plan, "batch": batch, "n": n}}
                     for n, plan in enumerate(plans)))
    for event_id in ids:
        assert sdk.finish(event_id, "generate-report-queued")["status"] == "Completed"
    ran = sdk.ledger("generate-report-queued", batch)
    order = [e["n"] for e in ran]
    # concurrency 1: one report at a time (each holds the slot for 300ms) ...
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(ran)]
    assert all(g >= 0.25 for g in gaps), f"reports overlapped: {gaps}"
    # ... and the enterprise run, sent last, jumps the queue of free ones (+100s priority).
    assert sorted(order) == [0, 1, 2, 3]
    assert order.index(3) <= 1, f"enterprise run went {order.index(3) + 1}th: {order}"


# --- 6. cancel on event -----------------------------------------------------------------------


def cancel_on_event(sdk: SdkHarness) -> None:
    lead, other = unique("lead"), unique("lead")
    lead_event, other_event = sdk.send(
        {"name": "crm/lead.created", "data": {"leadId": lead}},
        {"name": "crm/lead.created", "data": {"leadId": other}},
    )
    run = sdk.run_of(lead_event, "nurture-lead")
    other_run = sdk.run_of(other_event, "nurture-lead")
    wait_step(sdk, run["run_id"], "wait-before-followup", "sleeping")
    wait_step(sdk, other_run["run_id"], "wait-before-followup", "sleeping")

    sdk.send_one("crm/lead.converted", {"leadId": lead})
    cancelled = sdk.wait_run(run["run_id"])
    assert cancelled["status"] == "Cancelled", cancelled
    # Only the run whose leadId matches is cancelled.
    assert sdk.get_run(other_run["run_id"])["status"] == "Running"
    assert len(sdk.ledger("send-welcome", lead)) == 1
    assert sdk.ledger("send-followup", lead) == []

    sdk.send_one("crm/lead.converted", {"leadId": other})
    assert sdk.wait_run(other_run["run_id"])["status"] == "Cancelled"
    assert sdk.ledger("send-followup", other) == []


# --- 7. invoke --------------------------------------------------------------------------------


def invoke_returns_child_output(sdk: SdkHarness) -> None:
    items = [{"price": 2, "qty": 3}, {"price": 5, "qty": 1}]
    ok_event, empty_event = sdk.send(
        {"name": "shop/checkout.requested", "data": {"items": items}},
        {"name": "shop/checkout.requested", "data": {"items": []}},
    )
    ok = sdk.finish(ok_event, "checkout")
    assert ok["status"] == "Completed", ok
    assert ok["output"] == {"total": 11}
    assert step_names(ok) == ["compute-total"]
    # The child failed (NonRetriableError): the invoke step raises in the parent, which
    # catches it and returns the message.
    empty = sdk.finish(empty_event, "checkout")
    assert empty["status"] == "Completed", empty
    assert "Cart is empty" in empty["output"]["error"], empty


# --- 8. send event ----------------------------------------------------------------------------


def send_event_triggers_function(sdk: SdkHarness) -> None:
    email = f"{unique('someone')}@example.com"
    run = sdk.finish(sdk.send_one("app/user.signup", {"email": email}), "user-signup")
    assert run["status"] == "Completed", run
    [sent_id] = run["output"]["sent"]
    assert step_names(run) == ["send-welcome-email"]
    delivered = sdk.finish(sent_id, "send-email")
    assert delivered["status"] == "Completed", delivered
    assert delivered["output"] == {"delivered": f"welcome -> {email}"}
    assert len(sdk.ledger("deliver-email", email)) == 1


# --- production mode: event key, signed requests ----------------------------------------------


def production_mode(sdk: SdkHarness) -> None:
    assert sdk.keys is not None
    # The event API wants the event key.
    wrong = sdk.client.post(f"{sdk.url}/e/not-the-key",
                            json=[{"name": "app/dashboard.load", "data": {"userId": "x"}}])
    assert wrong.status_code == 401, wrong.text
    assert "error" in wrong.json(), wrong.text
    # The app really is in production mode: it rejects a call that is not signed...
    unsigned = sdk.client.post(
        f"{sdk.app.url}/api/inngest",
        params={"fnId": sdk.fn("load-dashboard"), "stepId": "step"},
        json={"event": {"name": "app/dashboard.load", "data": {"userId": "x"}, "id": "e1",
                        "ts": 1767225600000, "user": {}},
              "events": [], "steps": {}, "use_api": False, "version": 2,
              "ctx": {"run_id": "r1", "attempt": 0, "disable_immediate_execution": False,
                      "use_api": False, "stack": {"stack": [], "current": 0}}})
    assert unsigned.status_code == 401, unsigned.text
    # ... so these runs complete only because stepwell signs its calls as the SDKs expect
    # (parallel steps), the SDK's own event sends carry its event key (send_event), and
    # invoke works across signed calls.
    parallel_steps(sdk)
    send_event_triggers_function(sdk)
    invoke_returns_child_output(sdk)
