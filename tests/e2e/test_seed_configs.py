"""The seed's flow-control configurations, as the user wrote them (TypeScript object literals,
ported key for key to snake_case dicts), on the virtual clock.

    sync-crm        rateLimit: { limit: 10, period: "1m", key: "event.data.userId" },
                    throttle: { limit: 5, period: "1s" }
    index-product   debounce: { period: "10s", key: "event.data.productId" }
    generate-report priority: { run: "event.data.plan === 'enterprise' ? 100 : 0" }
    process-order   (API.md) rate_limit + throttle + cancel_on, sleep and wait_for_event

(The seed's `retries: 10` and NonRetriableError are covered by tests/e2e/test_errors.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import stepwell
from stepwell.testing import VirtualClock


async def _until(condition: Callable[[], Any], seconds: float = 10) -> None:
    """Poll a (sync) predicate with a real-time deadline."""
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - polling a plain predicate, not an event
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), seconds)


async def test_sync_crm_rate_limit_per_user_and_throttle(make_engine: Any,
                                                         clock: VirtualClock) -> None:
    """Excess events per user are skipped (stored, visible as `skipped`, nothing queued); the
    allowed ones all run, starting at throttled times (5 per 1s + burst 1 = 6 at once, then one
    every 200 ms, FIFO); the throttle drops none."""
    app = stepwell.App("crm")
    starts: dict[int, int] = {}

    @app.function(
        id="sync-crm",
        trigger="crm/contact.updated",
        rate_limit={"limit": 10, "period": "1m", "key": "event.data.userId"},
        throttle={"limit": 5, "period": "1s"},
    )
    async def sync_crm(ctx: stepwell.Context, step: stepwell.Step) -> int:
        n = ctx.event.data["n"]
        await step.run("sync", lambda: starts.setdefault(n, clock.now()))
        return int(n)

    # 12 events for user 7 (numeric key, as in event.data.userId) interleaved with 3 for "u2"
    users = [7, 7, 7, 7, "u2", 7, 7, 7, 7, "u2", 7, 7, 7, 7, "u2"]
    async with make_engine(app) as engine:
        t0 = clock.now()
        ids = [await engine.send("crm/contact.updated", {"n": n, "userId": user})
               for n, user in enumerate(users)]
        await clock.advance("6s")
        runs = {r.event_id: r for r in await engine.runs(function_id="sync-crm")}

        # user 7's 11th and 12th events in the minute are over the limit: skipped, not queued
        over = [n for n, user in enumerate(users) if user == 7][10:]
        assert over == [12, 13]
        skipped = {n for n in range(len(users)) if runs[ids[n]].status == "skipped"}
        assert skipped == set(over)
        assert all(runs[ids[n]].error["name"] == "RateLimited" for n in skipped)
        allowed = [n for n in range(len(users)) if n not in skipped]
        assert all(runs[ids[n]].status == "completed" for n in allowed)
        assert sorted(starts) == allowed                        # the throttle dropped none
        # GCRA throttle: capacity limit + burst = 6 at once, then one per period/limit = 200 ms
        assert [starts[n] - t0 for n in allowed] == [max(0, (i - 5) * 200)
                                                     for i in range(len(allowed))]

        # one rate-limit slot per period/limit = 6 s comes back for user 7: one more passes
        extra = [await engine.send("crm/contact.updated", {"n": n, "userId": 7})
                 for n in (100, 101)]
        await clock.advance("1s")
        after = {r.event_id: r.status for r in await engine.runs(function_id="sync-crm")}
    assert [after[i] for i in extra] == ["completed", "skipped"]
    assert starts[100] == t0 + 6000                 # the throttle has room again: at once


async def test_index_product_debounce_per_product(make_engine: Any,
                                                  clock: VirtualClock) -> None:
    """One run per product, 10 s after its last event, with that event; a later event opens a
    new window."""
    app = stepwell.App("catalog")
    indexed: list[tuple[str, int, int]] = []

    @app.function(
        id="index-product",
        trigger="catalog/product.updated",
        debounce={"period": "10s", "key": "event.data.productId"},
    )
    async def index_product(ctx: stepwell.Context, step: stepwell.Step) -> int:
        data = ctx.event.data
        await step.run("index", lambda: indexed.append(
            (data["productId"], data["rev"], clock.now() - t0)))
        return int(data["rev"])

    timeline = [(0, "p1", 1), (1, "p2", 1), (4, "p1", 2), (5, "p2", 2), (9, "p1", 3),
                (13, "p3", 1)]
    async with make_engine(app) as engine:
        t0 = clock.now()
        elapsed = 0
        for at, product, rev in timeline:
            await clock.advance(f"{at - elapsed}s")
            elapsed = at
            await engine.send("catalog/product.updated", {"productId": product, "rev": rev})
        await clock.advance("30s")                      # now at 43 s
        await engine.send("catalog/product.updated", {"productId": "p1", "rev": 4})
        await clock.advance("1m")
        runs = await engine.runs(function_id="index-product")
    assert sorted(indexed) == [("p1", 3, 19_000), ("p1", 4, 53_000), ("p2", 2, 15_000),
                               ("p3", 1, 23_000)]
    assert sorted(r.output for r in runs) == [1, 2, 3, 4]     # superseded events start no run
    assert {r.status for r in runs} == {"completed"}


async def test_generate_report_priority_jumps_the_last_100_seconds(
        make_engine: Any, clock: VirtualClock) -> None:
    """`priority.run` as written in the seed (JS `===`), with a backlog made by concurrency=1:
    an enterprise run is queued as if it arrived 100 s earlier, so it goes ahead of the free
    runs queued in the 100 s before it, but not of one queued 140 s before it.

    The backlog needs virtual time to pass while one step executes; `clock.advance` cannot do
    that (it waits for the engine to be idle first), so the test moves the clock with the
    harness's internal setter while the first run's step holds the only slot.
    """
    app = stepwell.App("reports")
    order: list[str] = []
    gate = asyncio.Event()

    async def make(who: str) -> None:
        order.append(who)
        if who == "blocker":
            await gate.wait()

    @app.function(
        id="generate-report",
        trigger="reports/requested",
        concurrency=1,
        priority={"run": "event.data.plan === 'enterprise' ? 100 : 0"},
    )
    async def generate_report(ctx: stepwell.Context, step: stepwell.Step) -> None:
        await step.run("make", make, ctx.event.data["who"])

    async with make_engine(app) as engine:
        t0 = clock.now()
        await engine.send("reports/requested", {"who": "blocker", "plan": "free"})
        await _until(lambda: order == ["blocker"])
        for at_s, who, plan in [(10, "free-old", "free"), (60, "free-1", "free"),
                                (90, "free-2", "free"), (150, "enterprise", "enterprise"),
                                (160, "free-3", "free")]:
            clock._set(t0 + at_s * 1000)            # virtual time passes; the blocker executes
            await engine.send("reports/requested", {"who": who, "plan": plan})
        # everything is parked behind the slot (nothing ready) before the slot frees
        await _until_parked(engine, clock)
        gate.set()
        await engine.idle()
        runs = await engine.runs(function_id="generate-report")
    # queued at 10, 60, 90, 150 (- 100 = 50), 160 s
    assert order == ["blocker", "free-old", "enterprise", "free-1", "free-2", "free-3"]
    assert {r.status for r in runs} == {"completed"}


async def _until_parked(engine: stepwell.Engine, clock: VirtualClock) -> None:
    async def parked() -> None:
        while (due := await engine._worker.next_due_at()) is not None and due <= clock.now():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    await asyncio.wait_for(parked(), 10)


async def test_process_order_rate_limit_throttle_and_cancel_on(make_engine: Any,
                                                                clock: VirtualClock) -> None:
    """API.md's process-order: per-user rate limit, throttled starts, cancellation by a
    matching `shop/order.cancelled`, a payment wait that times out after 24 h."""
    app = stepwell.App("shop")
    fetched: dict[str, int] = {}
    cancelled_orders: list[str] = []

    def get_user(order_id: str, user_id: Any) -> dict[str, Any]:
        fetched.setdefault(order_id, clock.now())
        return {"id": user_id}

    def cancel_order(order_id: str) -> None:
        cancelled_orders.append(order_id)

    @app.function(
        id="process-order",
        trigger="shop/order.created",
        retries=4,
        rate_limit={"limit": 10, "period": "1m", "key": "event.data.userId"},
        throttle={"limit": 5, "period": "1s"},
        cancel_on=[{"event": "shop/order.cancelled", "match": "data.orderId"}],
    )
    async def process_order(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        order_id = ctx.event.data["orderId"]
        await step.run("get-user", get_user, order_id, ctx.event.data["userId"])
        await step.sleep("wait-for-payment", "1h")
        payment = await step.wait_for_event(
            "wait-payment", event="shop/payment.success", match="data.orderId", timeout="24h")
        if payment is None:
            await step.run("cancel-order", cancel_order, order_id)
        return {"paid": payment is not None}

    orders = [(f"o{n}", "u1") for n in range(12)] + [("o100", "u2"), ("o101", "u2")]
    async with make_engine(app) as engine:
        t0 = clock.now()
        ids = {o: await engine.send("shop/order.created", {"orderId": o, "userId": u})
               for o, u in orders}
        await clock.advance("2s")
        await engine.send("shop/order.cancelled", {"orderId": "o1"})
        await engine.send("shop/order.cancelled", {"orderId": "o999"})   # matches nothing
        await clock.advance("1h")                   # every run now waits for its payment
        await engine.send("shop/payment.success", {"orderId": "o2"})
        await clock.advance("25h")
        runs = {r.event_id: r for r in await engine.runs(function_id="process-order")}

    status = {o: runs[i].status for o, i in ids.items()}
    assert status["o10"] == status["o11"] == "skipped"               # u1's 11th and 12th
    assert runs[ids["o10"]].error["name"] == "RateLimited"
    assert status["o1"] == "cancelled"
    assert {o for o, s in status.items() if s == "completed"} == (
        {o for o, _ in orders} - {"o1", "o10", "o11"})
    assert runs[ids["o2"]].output == {"paid": True}
    unpaid = {o for o, s in status.items() if s == "completed"} - {"o2"}
    assert all(runs[ids[o]].output == {"paid": False} for o in unpaid)
    assert sorted(cancelled_orders) == sorted(unpaid)
    # throttle: 6 starts at once, then one every 200 ms, in arrival order; none dropped
    allowed = [o for o, _ in orders if o not in ("o10", "o11")]
    assert [fetched[o] - t0 for o in allowed] == [max(0, (i - 5) * 200)
                                                  for i in range(len(allowed))]
