"""A fully typed app: mypy (`--strict`) checks every line,
and `assert_type` pins what it infers: step results are the types the step callables return,
`ctx.event.data` is the declared event model, `wait_for_event` returns the declared event.

    mypy --strict examples/typed_app.py
    python examples/typed_app.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from typing import assert_type

from pydantic import BaseModel

import stepwell


class OrderCreated(BaseModel):
    order_id: int
    user_id: int


class PaymentSucceeded(BaseModel):
    order_id: int
    amount: float


class User(BaseModel):
    id: int
    email: str


@dataclasses.dataclass
class Invoice:
    order_id: int
    amount: float
    email: str


order_created = stepwell.Event[OrderCreated]("shop/order.created")
payment_succeeded = stepwell.Event[PaymentSucceeded]("shop/payment.succeeded")

app = stepwell.App("typed-shop")


async def get_user(user_id: int) -> User:
    return User(id=user_id, email=f"user{user_id}@example.com")


def make_invoice(order_id: int, amount: float, email: str) -> Invoice:
    return Invoice(order_id=order_id, amount=amount, email=email)


@app.function(id="invoice-order", trigger=order_created)
async def invoice_order(ctx: stepwell.Context[OrderCreated], step: stepwell.Step) -> str:
    order = ctx.event.data
    assert_type(order, OrderCreated)
    user = await step.run("get-user", get_user, order.user_id)
    assert_type(user, User)
    payment = await step.wait_for_event("wait-payment", event=payment_succeeded,
                                        match="data.order_id", timeout="1d")
    if payment is None:
        return "unpaid"
    assert_type(payment.data, PaymentSucceeded)
    invoice = await step.run("invoice", make_invoice, order.order_id, payment.data.amount,
                             user.email)
    assert_type(invoice, Invoice)
    return f"invoiced {invoice.email} {invoice.amount:.2f}"


@app.function(id="greet-user", trigger=order_created)
def greet_user(ctx: stepwell.Context[OrderCreated], step: stepwell.SyncStep) -> str:
    """A sync handler: the blocking step API is typed the same way."""
    invoice = step.run("draft", make_invoice, ctx.event.data.order_id, 0.0, "draft@example.com")
    assert_type(invoice, Invoice)
    return invoice.email


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with stepwell.Engine(app, db=f"sqlite:///{folder}/typed.db") as engine:
            event_id = await engine.send(order_created.name, OrderCreated(order_id=1, user_id=7))
            assert isinstance(event_id, str)
            await engine.idle()
            await engine.send(payment_succeeded.name, PaymentSucceeded(order_id=1, amount=9.5))
            [run] = await engine.runs(event_id=event_id, function_id="invoice-order")
            done = await engine.wait(run.id)
            print(done.status, done.output)
            assert done.output == "invoiced user7@example.com 9.50"
            [greeted] = await engine.runs(event_id=event_id, function_id="greet-user")
            assert (await engine.wait(greeted.id)).output == "draft@example.com"


if __name__ == "__main__":
    asyncio.run(main())
