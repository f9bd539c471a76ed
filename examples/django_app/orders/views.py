"""Sync Django views sending events: in the view's transaction (`send_on_commit`)."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from orders.models import Order
from stepwell.integrations.django import engine, send_on_commit


@csrf_exempt
def create_order(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    with transaction.atomic():
        order = Order.objects.create(total=body["total"])
        # Sent only once the order is committed; nothing is sent if the block raises.
        send_on_commit({"name": "orders/order.created", "id": f"order-{order.id}",
                        "data": {"order_id": order.id}})
        if body.get("fail"):
            raise ValueError("the view failed after saving: the transaction rolls back")
    return JsonResponse({"order_id": order.id, "event_id": f"order-{order.id}"})


def order_runs(request: HttpRequest, event_id: str) -> HttpResponse:
    runs = engine().runs(event_id=event_id)
    return JsonResponse({"runs": [{"id": r.id, "status": r.status, "output": r.output}
                                  for r in runs]})
