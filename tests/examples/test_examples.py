"""The examples in examples/ (the seed's patterns in Python), each driven on the virtual clock,
and examples/demo.py run as a user would run it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HOUR = 3_600_000


def _load(name: str) -> Iterator[ModuleType]:
    """A fresh copy of examples/<name>.py: its own app and its own fake database."""
    module_name = f"_stepwell_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module          # dataclasses look their module up while defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)


@pytest.fixture
def shop() -> Iterator[ModuleType]:
    yield from _load("shop")


@pytest.fixture
def parallel() -> Iterator[ModuleType]:
    yield from _load("parallel")


@pytest.fixture
def loops() -> Iterator[ModuleType]:
    yield from _load("loops")


@pytest.fixture
def transfer() -> Iterator[ModuleType]:
    yield from _load("transfer")


async def start(engine: stepwell.Engine, name: str, data: dict[str, Any]) -> stepwell.Run:
    """Send an event and return the one run it started."""
    event_id = await engine.send(name, data)
    assert isinstance(event_id, str)
    [run] = await engine.runs(event_id=event_id)
    return run


async def current(engine: stepwell.Engine, run: stepwell.Run) -> stepwell.Run:
    fresh = await engine.get_run(run.id)
    assert fresh is not None
    return fresh


def step_ids(run: stepwell.Run) -> list[str]:
    return [s.id for s in run.steps]


def step(run: stepwell.Run, step_id: str) -> stepwell.StepInfo:
    [found] = [s for s in run.steps if s.id == step_id]
    return found


# --- shop.py -----------------------------------------------------------------------------------


async def test_shop_payment_after_the_sleep_completes_the_order(
        make_engine: Any, clock: VirtualClock, shop: ModuleType) -> None:
    async with make_engine(shop.app) as engine:
        run = await start(engine, "shop/order.created", {"orderId": "A-1", "userId": 7})
        await engine.idle()
        run = await current(engine, run)
        assert run.status == "running"
        assert [(s.id, s.status) for s in run.steps] == [
            ("get-user", "completed"), ("wait-for-payment", "sleeping")]

        await clock.advance("1h")
        run = await current(engine, run)
        assert run.status == "running"
        assert step(run, "wait-payment").status == "waiting"

        await clock.advance("30m")
        await engine.send("shop/payment.success", {"orderId": "A-1", "amount": 4200})
        run = await engine.wait(run.id, timeout=10)

    assert run.status == "completed"
    assert run.output == {"orderId": "A-1", "user": "Ada Lovelace", "paid": True, "amount": 4200}
    assert step_ids(run) == ["get-user", "wait-for-payment", "wait-payment"]
    payment = step(run, "wait-payment").output
    assert payment["name"] == "shop/payment.success" and payment["data"]["orderId"] == "A-1"
    assert run.ended_at is not None and run.started_at is not None
    assert run.ended_at - run.started_at == 90 * 60_000
    assert shop.db.cancelled_orders == []
    assert shop.db.user_lookups == 1          # memoized: replays after the sleep and wait reuse it


async def test_shop_no_payment_within_24h_cancels_the_order(
        make_engine: Any, clock: VirtualClock, shop: ModuleType) -> None:
    async with make_engine(shop.app) as engine:
        run = await start(engine, "shop/order.created", {"orderId": "A-1", "userId": 8})
        await clock.advance("1h")
        await clock.advance("23h59m")
        run = await current(engine, run)
        assert run.status == "running" and "cancel-order" not in step_ids(run)
        assert shop.db.cancelled_orders == []

        await clock.advance("1m")
        run = await engine.wait(run.id, timeout=10)

    assert run.status == "completed"
    assert run.output == {"orderId": "A-1", "user": "Grace Hopper", "paid": False}
    assert step_ids(run) == ["get-user", "wait-for-payment", "wait-payment", "cancel-order"]
    assert step(run, "wait-payment").output is None
    cancel = step(run, "cancel-order")
    assert cancel.output == {"orderId": "A-1", "status": "cancelled",
                             "reason": "no payment within 24h"}
    assert run.started_at is not None and cancel.started_at - run.started_at == 25 * HOUR
    assert shop.db.cancelled_orders == ["A-1"]


@pytest.mark.parametrize("cancel_after", ["10m", "2h"], ids=["during-sleep", "during-wait"])
async def test_shop_order_cancelled_event_cancels_the_run(
        make_engine: Any, clock: VirtualClock, shop: ModuleType, cancel_after: str) -> None:
    async with make_engine(shop.app) as engine:
        run = await start(engine, "shop/order.created", {"orderId": "A-1", "userId": 7})
        await clock.advance(cancel_after)
        await engine.send("shop/order.cancelled", {"orderId": "A-2"})     # another order
        await engine.idle()
        assert (await current(engine, run)).status == "running"

        await engine.send("shop/order.cancelled", {"orderId": "A-1"})
        run = await engine.wait(run.id, timeout=10)
        assert run.status == "cancelled"

        # Nothing of the cancelled run happens later: no payment wait, no cancel-order step.
        await clock.advance("2d")
        await engine.send("shop/payment.success", {"orderId": "A-1"})
        await engine.idle()
        run = await current(engine, run)

    assert run.status == "cancelled"
    assert run.output is None
    assert "cancel-order" not in step_ids(run)
    assert shop.db.cancelled_orders == []


async def test_shop_payment_for_another_order_does_not_match(
        make_engine: Any, clock: VirtualClock, shop: ModuleType) -> None:
    async with make_engine(shop.app) as engine:
        first = await start(engine, "shop/order.created", {"orderId": "A-1", "userId": 7})
        second = await start(engine, "shop/order.created", {"orderId": "A-2", "userId": 8})
        await clock.advance("1h")

        await engine.send("shop/payment.success", {"orderId": "A-2", "amount": 10})
        second = await engine.wait(second.id, timeout=10)
        assert second.output["paid"] is True and second.output["orderId"] == "A-2"
        await engine.idle()
        first = await current(engine, first)
        assert first.status == "running"
        assert step(first, "wait-payment").status == "waiting"

        await clock.advance("24h")
        first = await engine.wait(first.id, timeout=10)

    assert first.status == "completed" and first.output["paid"] is False
    assert shop.db.cancelled_orders == ["A-1"]


async def test_shop_payment_sent_during_the_sleep_is_not_seen(
        make_engine: Any, clock: VirtualClock, shop: ModuleType) -> None:
    """The seed's pattern (sleep, then wait) misses early payments: a wait only sees events
    that arrive once the run has reached it (Inngest's semantics). The example documents it."""
    async with make_engine(shop.app) as engine:
        run = await start(engine, "shop/order.created", {"orderId": "A-1", "userId": 7})
        await clock.advance("30m")
        await engine.send("shop/payment.success", {"orderId": "A-1", "amount": 10})
        await clock.advance("25h")
        run = await engine.wait(run.id, timeout=10)
    assert run.output["paid"] is False
    assert shop.db.cancelled_orders == ["A-1"]


# --- parallel.py -------------------------------------------------------------------------------


async def test_parallel_fetches_run_concurrently(make_engine: Any,
                                                 parallel: ModuleType) -> None:
    async with make_engine(parallel.app) as engine:
        ada = await start(engine, "accounts/account.requested", {"userId": 7})
        ada = await engine.wait(ada.id, timeout=10)
        grace = await start(engine, "accounts/account.requested", {"userId": 8})
        grace = await engine.wait(grace.id, timeout=10)

    assert ada.status == "completed"
    assert ada.output == {"name": "Ada Lovelace", "plan": "enterprise", "active": True}
    assert grace.output == {"name": "Grace Hopper", "plan": "pro", "active": False}
    assert sorted(step_ids(ada)) == ["fetch-sub", "fetch-user"]
    assert step(ada, "fetch-user").output["stripeCustomer"] == "cus_ada"
    assert step(ada, "fetch-sub").output == {"id": "sub_1", "plan": "enterprise",
                                             "status": "active"}
    assert all(s.attempts == 1 and s.status == "completed" for s in ada.steps)
    assert parallel.services.peak_in_flight == 2       # both fetches were in flight at once


# --- loops.py ----------------------------------------------------------------------------------

ITEMS = [{"id": "sku-1", "qty": 2, "price": 15},
         {"id": "sku-2", "qty": 1, "price": 99},
         {"id": "sku-3", "qty": 5, "price": 4}]


async def test_loop_with_dynamic_ids_makes_one_step_per_item(make_engine: Any,
                                                             loops: ModuleType) -> None:
    async with make_engine(loops.app) as engine:
        run = await start(engine, "warehouse/items.received", {"items": ITEMS})
        run = await engine.wait(run.id, timeout=10)

    assert run.status == "completed"
    assert run.output == {"items": 3, "total": 30 + 99 + 20}
    assert [(s.id, s.output) for s in run.steps] == [
        ("process-item-sku-1", {"id": "sku-1", "total": 30}),
        ("process-item-sku-2", {"id": "sku-2", "total": 99}),
        ("process-item-sku-3", {"id": "sku-3", "total": 20})]
    assert loops.warehouse.processed == ["sku-1", "sku-2", "sku-3"]


async def test_loop_failure_retries_only_the_failing_item(
        make_engine: Any, clock: VirtualClock, loops: ModuleType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = loops.warehouse.process_item
    failed: list[str] = []

    def flaky(item: dict[str, Any]) -> dict[str, Any]:
        if item["id"] == "sku-2" and not failed:
            failed.append(item["id"])
            raise TimeoutError("scanner offline")
        result: dict[str, Any] = real(item)
        return result

    monkeypatch.setattr(loops.warehouse, "process_item", flaky)
    async with make_engine(loops.app) as engine:
        run = await start(engine, "warehouse/items.received", {"items": ITEMS})
        await clock.advance("2m")
        run = await engine.wait(run.id, timeout=10)

    assert run.status == "completed" and run.output["total"] == 149
    assert [s.attempts for s in run.steps] == [1, 2, 1]
    assert loops.warehouse.processed == ["sku-1", "sku-2", "sku-3"]   # sku-1 not redone


async def test_loop_with_a_repeated_id(make_engine: Any, loops: ModuleType) -> None:
    boxes = [["sku-1", "sku-2"], ["sku-3"], ["sku-4", "sku-5", "sku-6"]]
    async with make_engine(loops.app) as engine:
        run = await start(engine, "warehouse/order.picked", {"boxes": boxes})
        run = await engine.wait(run.id, timeout=10)

    assert run.status == "completed"
    assert run.output == [{"box": 1, "items": 2}, {"box": 2, "items": 1},
                          {"box": 3, "items": 3}]
    assert step_ids(run) == ["pack-box", "pack-box", "pack-box"]
    assert [s.output for s in run.steps] == run.output
    assert loops.warehouse.packed == boxes                 # each box packed exactly once


# --- transfer.py -------------------------------------------------------------------------------

TRANSFER = {"transferId": "T-1", "from": "alice", "to": "bob", "amount": 50}


async def test_transfer_flaky_step_is_retried_with_backoff_then_succeeds(
        make_engine: Any, clock: VirtualClock, transfer: ModuleType) -> None:
    transfer.bank.outages = 2
    async with make_engine(transfer.app) as engine:
        run = await start(engine, "bank/transfer.init", TRANSFER)
        await engine.idle()
        run = await current(engine, run)
        assert run.status == "running" and transfer.bank.credit_calls == 1
        await clock.advance("14s")                 # the first retry waits at least 15s
        assert transfer.bank.credit_calls == 1
        await clock.advance("10m")
        run = await engine.wait(run.id, timeout=10)
        await engine.idle()
        failure_runs = await engine.runs(function_id="risky-transfer-failure")

    assert run.status == "completed"
    assert run.output == {"transferId": "T-1", "status": "done", "toBalance": 150}
    assert step_ids(run) == ["validate", "debit-source", "credit-destination"]
    credit = step(run, "credit-destination")
    assert credit.attempts == 3 and credit.status == "completed"
    assert [f["error"]["message"] for f in credit.failures] == ["bank API timed out"] * 2
    assert [s.attempts for s in run.steps] == [1, 1, 3]
    assert transfer.bank.credit_calls == 3
    assert transfer.bank.balances == {"alice": 450, "bob": 150}
    assert failure_runs == [] and transfer.bank.alerts == []


async def test_transfer_invalid_payload_fails_at_once_and_on_failure_rolls_back(
        make_engine: Any, clock: VirtualClock, transfer: ModuleType) -> None:
    async with make_engine(transfer.app) as engine:
        run = await start(engine, "bank/transfer.init", {**TRANSFER, "amount": -5})
        run = await engine.wait(run.id, timeout=10)
        await clock.advance("1h")                 # no retry is pending: nothing changes
        run = await current(engine, run)
        [failure] = await engine.runs(function_id="risky-transfer-failure")
        failure = await engine.wait(failure.id, timeout=10)

    assert run.status == "failed"
    assert run.error is not None and "Invalid payload" in run.error["message"]
    assert step_ids(run) == ["validate"]
    validate = step(run, "validate")
    assert validate.attempts == 1 and validate.status == "failed"
    assert validate.error is not None and validate.error["name"] == "NonRetriableError"
    assert transfer.bank.debits == {} and transfer.bank.balances == {"alice": 500, "bob": 100}

    assert failure.status == "completed"
    assert failure.output == {"transferId": "T-1", "rolledBack": 0}   # from the original event
    assert step_ids(failure) == ["rollback-funds", "notify-admin"]
    [alert] = transfer.bank.alerts
    assert alert.startswith("Transfer failed: ")
    assert "Invalid payload: amount must be a positive integer, got -5" in alert
    assert step(failure, "notify-admin").output == alert


async def test_transfer_exhausted_retries_fail_the_run_and_refund_the_debit(
        make_engine: Any, clock: VirtualClock, transfer: ModuleType) -> None:
    transfer.bank.outages = 1_000
    async with make_engine(transfer.app) as engine:
        run = await start(engine, "bank/transfer.init", TRANSFER)
        await engine.idle()
        assert transfer.bank.balances["alice"] == 450            # debited
        await clock.advance("1h")
        run = await engine.wait(run.id, timeout=10)
        await engine.idle()
        [failure] = await engine.runs(function_id="risky-transfer-failure")
        failure = await engine.wait(failure.id, timeout=10)

    assert run.status == "failed"
    credit = step(run, "credit-destination")
    assert credit.status == "failed" and credit.attempts == 5          # retries=4
    assert transfer.bank.credit_calls == 5
    assert failure.status == "completed"
    assert failure.output == {"transferId": "T-1", "rolledBack": 50}
    assert transfer.bank.balances == {"alice": 500, "bob": 100}       # refunded
    [alert] = transfer.bank.alerts
    assert "bank API timed out" in alert


# --- demo.py -----------------------------------------------------------------------------------


def test_demo_runs_and_exits_zero(tmp_path: Path) -> None:
    """`python examples/demo.py`, from a scratch directory so the repo stays clean; twice, to
    check that the second run starts from a fresh database."""
    for _ in range(2):
        done = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "10/10 runs ended as expected" in out
        assert "!!" not in out
        for line in ["function accounts/load-account   status COMPLETED",
                     "process-item-sku-3",
                     "function bank/risky-transfer   status FAILED",
                     "function bank/risky-transfer-failure   status COMPLETED",
                     "Transfer failed: Invalid payload",
                     "function shop/process-order   status CANCELLED",
                     "timed out at +25h00m -> None",
                     "x3 (2 failed: bank API timed out)",
                     "orders cancelled for non-payment: ['A-1002']"]:
            assert line in out, f"missing {line!r} in:\n{out}"
        assert (tmp_path / ".stepwell" / "demo.db").is_file()
    # It ends by saying how to look at its runs: a `stepwell dev` command that loads its apps.
    [command] = [line.strip() for line in out.splitlines() if " dev " in line]
    script, dev, target, db_flag, db_url = command.split()
    assert (dev, db_flag, db_url) == ("dev", "--db", "sqlite:///.stepwell/demo.db")
    assert (tmp_path / script).resolve() == Path(sys.executable).parent.resolve() / "stepwell"
    assert "open http://127.0.0.1:8288/dashboard" in out
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from stepwell.cli import load_apps; "
         "print(sorted(app.id for app in load_apps(sys.argv[1])))", target],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "['accounts', 'bank', 'shop', 'warehouse']"


@pytest.fixture
def flow() -> Iterator[ModuleType]:
    yield from _load("flow")


async def test_flow_control_as_the_guide_configures_it(flow: ModuleType, make_engine: Any,
                                                      clock: VirtualClock) -> None:
    async with make_engine(flow.app) as engine:
        for n in range(12):                                  # one user, 12 updates at once
            await engine.send("crm/contact.updated", {"userId": 7, "n": n})
        for n in range(3):                                   # a burst of product updates
            await engine.send("shop/product.updated", {"productId": "p1", "price": n})
        await engine.send("reports/report.requested", {"customer": "free-1", "plan": "free"})
        await engine.idle()                                  # free-1 has started
        await engine.send([
            {"name": "reports/report.requested", "data": {"customer": "free-2", "plan": "free"}},
            {"name": "reports/report.requested", "data": {"customer": "big",
                                                          "plan": "enterprise"}}])
        await clock.advance("5m")
        skipped = await engine.runs(function_id="sync-crm", status="skipped")
    assert [d["n"] for d in flow.SYNCED] == list(range(10))  # rate limit: 10 per minute
    assert len(skipped) == 2                                 # the rest are recorded as skipped
    assert flow.INDEXED == [{"productId": "p1", "price": 2}]  # debounce: once, latest data
    assert flow.REPORTS == ["free-1", "big", "free-2"]       # enterprise jumped the backlog


# --- agent.py ----------------------------------------------------------------------------------


def test_the_agent_example_runs_offline_and_exits_zero(tmp_path: Path) -> None:
    """`python examples/agent.py`: a Pydantic AI agent with a scripted model (no network), a
    tool, an approved refund and the run's token totals."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "agent.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in ["approval requested for ['refund']", "approved: HTTP 200",
                 "the link used again: HTTP 409",
                 "run completed: Sorry for the delay. order 1042 was refunded.",
                 "step support__approval.wait", "tokens: 750 in, 60 out, 3 model requests",
                 "all as expected"]:
        assert line in out, f"missing {line!r} in:\n{out}"
    assert (tmp_path / ".stepwell" / "agent.db").is_file()
