"""Order processing: the seed's "Multi-Step Execution" pattern.

    order.created ─▶ get-user ─▶ sleep 1h ─▶ wait for payment.success (24h) ─▶ cancel if unpaid

Every side effect lives in a step, so a crash or a redeploy between steps loses nothing: the
run resumes after the last finished step, and the sleep and the wait survive restarts.

See it run:  python examples/demo.py

One thing to know about this pattern (it is Inngest's semantics, and stepwell's): a
`wait_for_event` only sees events that arrive *after* the run reaches it. A payment sent during
the first hour (while the run sleeps in "wait-for-payment") is not seen by "wait-payment", and
the order is cancelled 24h later. `tests/examples/test_examples.py` shows it. If payments can
come early, wait for the payment first (timeout "25h") and drop the sleep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stepwell
from stepwell import Cancel

app = stepwell.App("shop")


# --- a fake, deterministic "database" --------------------------------------------------------


@dataclass
class ShopDB:
    users: dict[int, dict[str, Any]] = field(default_factory=lambda: {
        7: {"id": 7, "name": "Ada Lovelace", "email": "ada@example.com"},
        8: {"id": 8, "name": "Grace Hopper", "email": "grace@example.com"},
    })
    cancelled_orders: list[str] = field(default_factory=list)
    user_lookups: int = 0

    def find_user(self, user_id: int) -> dict[str, Any]:
        self.user_lookups += 1
        user = self.users.get(user_id)
        if user is None:
            # A missing user will not appear on a retry: fail the run now.
            raise stepwell.NonRetriableError(f"user {user_id} does not exist")
        return user

    def cancel_order(self, order_id: str) -> dict[str, Any]:
        if order_id not in self.cancelled_orders:     # idempotent, as step bodies should be
            self.cancelled_orders.append(order_id)
        return {"orderId": order_id, "status": "cancelled", "reason": "no payment within 24h"}


db = ShopDB()


# --- the function ----------------------------------------------------------------------------


@app.function(
    id="process-order",
    trigger="shop/order.created",
    # Cancel this order's run as soon as the order is cancelled (matching on data.orderId).
    # (API.md's version of this function also sets rate_limit and throttle: left out until the
    # engine enforces flow control; see examples/README.md.)
    cancel_on=[Cancel(event="shop/order.cancelled", match="data.orderId")],
)
async def process_order(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    order_id: str = ctx.event.data["orderId"]

    # 1. Step: look the user up (retried on transient errors, memoized once it succeeds).
    user = await step.run("get-user", db.find_user, ctx.event.data["userId"])

    # 2. Step: a durable pause; no process sits waiting for this hour.
    await step.sleep("wait-for-payment", "1h")

    # 3. Step: wait (up to 24h) for the payment of *this* order: the payment event's
    #    data.orderId must equal this event's data.orderId. Returns None on timeout.
    payment = await step.wait_for_event(
        "wait-payment", event="shop/payment.success", match="data.orderId", timeout="24h")

    # 4. Step: conditional logic, still inside a step.
    if payment is None:
        await step.run("cancel-order", db.cancel_order, order_id)
        return {"orderId": order_id, "user": user["name"], "paid": False}
    return {"orderId": order_id, "user": user["name"], "paid": True,
            "amount": payment.data.get("amount")}
