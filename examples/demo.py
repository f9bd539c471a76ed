"""stepwell in ten seconds:  python examples/demo.py

Runs the example functions of this folder on a real engine with a real SQLite file
(.stepwell/demo.db, recreated on every run), then prints what each run did, step by step.

- Part 1 uses the real clock: parallel steps, loops, a transfer, and a transfer that fails on an
  invalid payload and triggers its failure handler (rollback + admin alert).
- Part 2 runs the order-processing example *unchanged*, with its real 1-hour sleep and 24-hour
  payment timeout, on a `VirtualClock`: a day passes in a few milliseconds, so you see the paid,
  unpaid (timed out) and cancelled outcomes, and a flaky bank API retried with backoff. Virtual
  time is how stepwell's tests run long workflows too.

Exits 0 when every run ended as expected, 1 otherwise; it never takes more than 20 seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the sibling example modules

import loops
import parallel
import shop
import transfer

import stepwell
from stepwell.testing import VirtualClock

DB_PATH = Path(".stepwell") / "demo.db"
OVERALL_TIMEOUT_S = 20.0
WAIT_S = 10.0
APPS = (shop.app, parallel.app, loops.app, transfer.app)


@dataclass
class Outcome:
    label: str
    run: stepwell.Run
    expected: str


# --- printing ----------------------------------------------------------------------------------


def short(value: Any, width: int = 70) -> str:
    text = json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 3] + "..."


def offset(ms: int) -> str:
    """+12ms, +45s, +1m05s, +1h05m, +25h00m."""
    ms = max(ms, 0)
    if ms < 1000:
        return f"+{ms}ms"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3_600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"+{hours}h{minutes:02d}m"
    if minutes:
        return f"+{minutes}m{secs:02d}s"
    return f"+{secs}s"


def step_result(step: stepwell.StepInfo, run: stepwell.Run, start: int) -> str:
    if step.error is not None:
        return f"error {step.error.get('name')}: {step.error.get('message')}"
    if step.status == "interrupted":
        return f"interrupted: the run ended during this {step.kind}"
    if step.kind == "sleep":
        return f"slept until {offset((step.ended_at or start) - start)}"
    if step.kind == "wait":
        when = offset((step.ended_at or start) - start)
        if step.output is None:
            return f"timed out at {when} -> None"
        return f"{when}: got {step.output.get('name')} {short(step.output.get('data'), 40)}"
    return "-> " + short(step.output, 50)


async def describe(engine: stepwell.Engine, outcome: Outcome) -> bool:
    run = outcome.run
    ok = run.status == outcome.expected
    mark = "ok " if ok else "!! "
    print(f"  {mark}{outcome.label}")
    print(f"      function {run.function_id}   status {run.status.upper()}"
          + ("" if ok else f"   (expected {outcome.expected})"))
    if run.event_id is not None:
        event = await engine.get_event(run.event_id)
        if event is not None:
            print(f"      event    {event.name} {short(event.data, 55)}")
    start = run.started_at or run.created_at
    if run.steps:
        print(f"      {'at':>8}  {'step':<20} {'kind':<5} {'tries':<8} result")
    for step in run.steps:
        attempts = f"x{step.attempts}"
        if step.failures and step.error is None:
            last = step.failures[-1].get("error") or {}
            attempts += f" ({len(step.failures)} failed: {last.get('message')})"
        print(f"      {offset(step.started_at - start):>8}  {step.id:<20} {step.kind:<5} "
              f"{attempts:<8} {step_result(step, run, start)}")
    if run.status == "completed":
        print(f"      output   {short(run.output, 90)}")
    elif run.error is not None:
        print(f"      error    {run.error.get('name')}: {run.error.get('message')}")
    if run.ended_at is not None:
        print(f"      took     {offset(run.ended_at - start)[1:]}")
    return ok


async def the_run(engine: stepwell.Engine, event_id: str, function_id: str) -> stepwell.Run:
    """The run of `function_id` started by `event_id`."""
    for run in await engine.runs(event_id=event_id):
        if run.function_id.endswith("/" + function_id):
            return run
    raise LookupError(f"event {event_id} started no run of {function_id}")


async def send(engine: stepwell.Engine, name: str, data: dict[str, Any]) -> str:
    event_id = await engine.send(name, data)
    assert isinstance(event_id, str)
    return event_id


# --- part 1: real time -------------------------------------------------------------------------


async def part_one(db_url: str) -> list[Outcome]:
    print("\nPART 1: real clock. Each event starts a durable run; every step is checkpointed")
    print("to SQLite before the next one starts.\n")
    transfer.bank.outages = 0
    async with stepwell.Engine(*APPS, db=db_url) as engine:
        sent = {
            "parallel": await send(engine, "accounts/account.requested", {"userId": 7}),
            "loop": await send(engine, "warehouse/items.received", {"items": [
                {"id": "sku-1", "qty": 2, "price": 15},
                {"id": "sku-2", "qty": 1, "price": 99},
                {"id": "sku-3", "qty": 5, "price": 4}]}),
            "repeat": await send(engine, "warehouse/order.picked", {
                "boxes": [["sku-1", "sku-2"], ["sku-3"]]}),
            "transfer": await send(engine, "bank/transfer.init", {
                "transferId": "T-1", "from": "alice", "to": "bob", "amount": 50}),
            "invalid": await send(engine, "bank/transfer.init", {
                "transferId": "T-2", "from": "alice", "to": "bob", "amount": -5}),
        }
        plan = [("parallel", "load-account", "completed",
                 "parallel steps: fetch-user and fetch-sub at once (asyncio.gather)"),
                ("loop", "process-items", "completed",
                 "a loop with dynamic step ids: process-item-{id}"),
                ("repeat", "pack-boxes", "completed",
                 "a loop reusing one step id: pack-box (made unique by the engine)"),
                ("transfer", "risky-transfer", "completed", "a transfer that goes through"),
                ("invalid", "risky-transfer", "failed",
                 "an invalid transfer: NonRetriableError, no retries, the run fails")]
        outcomes = []
        for key, fn_id, expected, label in plan:
            run = await the_run(engine, sent[key], fn_id)
            outcomes.append(Outcome(label, await engine.wait(run.id, timeout=WAIT_S), expected))
        await engine.idle()
        [failure] = await engine.runs(function_id="risky-transfer-failure")
        outcomes.append(Outcome(
            "...so its on_failure handler runs as its own durable run: rollback + alert",
            await engine.wait(failure.id, timeout=WAIT_S), "completed"))
        for outcome in outcomes:
            await describe(engine, outcome)
            print()
    print(f"  admin alerts sent: {transfer.bank.alerts}")
    return outcomes


# --- part 2: virtual time ----------------------------------------------------------------------


async def part_two(db_url: str) -> list[Outcome]:
    print("\nPART 2: the order example with its real durations (sleep 1h, wait up to 24h for")
    print("the payment) on a VirtualClock: the engine is the same, only time is simulated,")
    print("so a day of waiting takes milliseconds.\n")
    # The simulated day is placed in the 26 hours before now, so every timestamp this part
    # stores in demo.db is in the past, consistent with part 1 for whoever inspects the file.
    clock = VirtualClock(start=int(time.time() * 1000) - 26 * 3_600_000)
    transfer.bank.outages = 2
    t0 = clock.now()

    def say(text: str) -> None:
        print(f"  [{offset(clock.now() - t0):>7}] {text}")

    async with stepwell.Engine(*APPS, db=db_url, clock=clock) as engine:
        paid = await send(engine, "shop/order.created", {"orderId": "A-1001", "userId": 7})
        unpaid = await send(engine, "shop/order.created", {"orderId": "A-1002", "userId": 8})
        dropped = await send(engine, "shop/order.created", {"orderId": "A-1003", "userId": 7})
        flaky = await send(engine, "bank/transfer.init", {
            "transferId": "T-3", "from": "alice", "to": "bob", "amount": 25})
        await engine.idle()
        say("orders A-1001, A-1002, A-1003 created; transfer T-3 sent (the bank API will time "
            "out twice)")
        await clock.advance("10m")
        await send(engine, "shop/order.cancelled", {"orderId": "A-1003"})
        await engine.idle()
        say("customer cancels A-1003 -> cancel_on stops its run mid-sleep")
        await clock.advance("50m")
        say("the 1h sleeps end; A-1001 and A-1002 now wait for shop/payment.success")
        await clock.advance("5m")
        await send(engine, "shop/payment.success", {"orderId": "A-9999", "amount": 1})
        await send(engine, "shop/payment.success", {"orderId": "A-1001", "amount": 4200})
        await engine.idle()
        say("payments arrive for A-9999 (matches no order) and A-1001 (resumes its run)")
        await clock.advance("24h")
        say("A-1002 was never paid: its 24h wait timed out (at +25h) and cancel-order ran")
        print()
        plan = [(paid, "process-order", "completed", "order A-1001: paid after the sleep"),
                (unpaid, "process-order", "completed",
                 "order A-1002: no payment within 24h, so cancelled by the function"),
                (dropped, "process-order", "cancelled",
                 "order A-1003: cancelled by a shop/order.cancelled event"),
                (flaky, "risky-transfer", "completed",
                 "transfer T-3: credit-destination retried with backoff, then succeeded")]
        outcomes = []
        for event_id, fn_id, expected, label in plan:
            run = await the_run(engine, event_id, fn_id)
            outcomes.append(Outcome(label, await engine.wait(run.id, timeout=WAIT_S), expected))
        for outcome in outcomes:
            await describe(engine, outcome)
            print()
    print(f"  orders cancelled for non-payment: {shop.db.cancelled_orders}")
    return outcomes


# --- main --------------------------------------------------------------------------------------


async def main() -> int:
    started = time.monotonic()
    for suffix in ("", "-wal", "-shm", "-journal"):
        DB_PATH.with_name(DB_PATH.name + suffix).unlink(missing_ok=True)
    DB_PATH.parent.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{DB_PATH.resolve()}"
    print("stepwell demo: durable functions in Python, the Inngest way")
    print(f"database: {DB_PATH.resolve()} (fresh)")
    outcomes = await part_one(db_url) + await part_two(db_url)
    good = sum(1 for o in outcomes if o.run.status == o.expected)
    elapsed = time.monotonic() - started
    print(f"\n{good}/{len(outcomes)} runs ended as expected, in {elapsed:.1f}s of real time.")
    print(f"All runs are stored in {DB_PATH}; the example code is in examples/*.py.")
    print("\nTo look at these runs, their events and step timelines, serve the same database:\n")
    print(f"    {look_command()}\n")
    print("and open http://127.0.0.1:8288/dashboard (Ctrl-C stops it).")
    return 0 if good == len(outcomes) else 1


def look_command() -> str:
    """The `stepwell dev` command that serves the demo's apps on its database, spelled as this
    shell can run it (the `stepwell` script next to this Python, relative when it is below)."""
    here = Path(__file__).resolve()
    script = Path(sys.executable).parent / "stepwell"
    if not script.exists():
        return f"stepwell dev {here}:APPS --db sqlite:///{DB_PATH.resolve()}"
    cwd = Path.cwd()
    spelled = [str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p)
               for p in (script, here)]
    return f"{spelled[0]} dev {spelled[1]}:APPS --db sqlite:///{DB_PATH}"


def run() -> int:
    async def bounded() -> int:
        try:
            async with asyncio.timeout(OVERALL_TIMEOUT_S):
                return await main()
        except TimeoutError:
            print(f"\ndemo: gave up after {OVERALL_TIMEOUT_S:.0f}s (this is a bug: please "
                  "report it)", file=sys.stderr)
            return 1

    return asyncio.run(bounded())


if __name__ == "__main__":
    sys.exit(run())
