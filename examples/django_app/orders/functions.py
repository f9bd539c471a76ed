"""The project's durable functions. Steps may use the ORM: the worker runs them in threads."""

from __future__ import annotations

import stepwell

functions = stepwell.App("orders")


def mark_confirmed(order_id: int) -> str:
    from orders.models import Order

    Order.objects.filter(id=order_id).update(status="confirmed")
    return Order.objects.get(id=order_id).status


@functions.function(id="confirm-order", trigger="orders/order.created")
def confirm_order(ctx: stepwell.Context, step: stepwell.SyncStep) -> dict[str, object]:
    status = step.run("confirm", mark_confirmed, ctx.event.data["order_id"])
    return {"order_id": ctx.event.data["order_id"], "status": status}
