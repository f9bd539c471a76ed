"""A FastAPI app with stepwell: the engine runs in the app's lifespan, a handler sends an event
through the `Depends(sw.engine)` dependency, and stepwell's API and dashboard are mounted at
/stepwell (the dashboard at http://127.0.0.1:8000/stepwell/dashboard).

    uvicorn examples.fastapi_app.main:api          # STEPWELL_DB=... to choose the database
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel

import stepwell
from stepwell.integrations.fastapi import Stepwell

functions = stepwell.App("shop")


class Receipt(BaseModel):
    order_id: int
    total: float


def charge(order_id: int, total: float) -> Receipt:
    return Receipt(order_id=order_id, total=total)


@functions.function(id="fulfil-order", trigger="shop/order.created")
async def fulfil_order(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, object]:
    receipt = await step.run("charge", charge, ctx.event.data["order_id"],
                             ctx.event.data["total"])
    await step.sleep("cool-off", "10ms")
    return {"charged": receipt.total, "order": receipt.order_id}


sw = Stepwell(stepwell.Engine(functions, db=os.environ.get("STEPWELL_DB",
                                                           "sqlite:///.stepwell/fastapi.db")))
api = FastAPI(lifespan=sw.lifespan)
api.mount("/stepwell", sw.asgi_app())


class Order(BaseModel):
    order_id: int
    total: float


@api.post("/orders")
async def create_order(order: Order,
                       engine: Annotated[stepwell.Engine, Depends(sw.engine)]
                       ) -> dict[str, str]:
    event_id = await engine.send("shop/order.created", order.model_dump())
    assert isinstance(event_id, str)
    return {"event_id": event_id}


@api.get("/orders/{event_id}")
async def order_status(event_id: str,
                       engine: Annotated[stepwell.Engine, Depends(sw.engine)]
                       ) -> dict[str, object]:
    runs = await engine.runs(event_id=event_id)
    return {"runs": [{"id": r.id, "status": r.status, "output": r.output} for r in runs]}
