"""A real app written with the official Inngest Python SDK (`inngest` on PyPI), served by FastAPI.

It implements the seed's examples (multi-step, sleep, wait for event with a match and a timeout,
parallel steps, loops, retries, `NonRetriableError`, `on_failure`, rate limit, throttle,
debounce, priority with `===`) plus cancel-on-event, invoke and send_event, with durations
shortened so the tests run on the real clock. Nothing here knows about stepwell: the tests point
it at `stepwell serve` with `INNGEST_DEV=http://127.0.0.1:PORT`, as a user would.

Run: `python tests/inngest/py_app/app.py [PORT]` (or `PORT=...`; 0 picks a free port). It prints
`py-app listening on http://127.0.0.1:NNNNN` once it accepts connections, and serves the SDK at
`/api/inngest`. `GET /_test/ledger` lists the side effects the steps performed (which step ran,
when, with what), so the tests can check memoization, retries and ordering from the app's side;
`GET /_test/traceparents` the `traceparent` header of each call the server made.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import sys
import time
from typing import Any

import fastapi
import inngest.fast_api  # also binds `inngest`
import uvicorn
from inngest.experimental import ai

# Dev mode when INNGEST_DEV is set (`INNGEST_DEV=http://127.0.0.1:8288`, as the tests mostly run
# it); production mode with `INNGEST_DEV=0` (or unset) plus `INNGEST_BASE_URL`,
# `INNGEST_SIGNING_KEY` and `INNGEST_EVENT_KEY`: requests must then be signed.
DEV = os.environ.get("INNGEST_DEV", "").strip().lower() not in ("", "0", "false")
client = inngest.Inngest(app_id="py-app", is_production=not DEV)

# Side effects performed inside steps, in order. Code outside steps runs on every call, so only
# steps record here: a memoized step that ran once shows up once.
LEDGER: list[dict[str, Any]] = []


def record(kind: str, key: Any, **extra: Any) -> None:
    LEDGER.append({"kind": kind, "key": key, "t": time.time(), **extra})


# --- 1. Multi-step execution: step.run, step.sleep, step.wait_for_event, conditional step ------


@client.create_function(
    fn_id="process-order",
    trigger=inngest.TriggerEvent(event="shop/order.created"),
)
async def process_order(ctx: inngest.Context) -> dict[str, Any]:
    event = ctx.event

    async def get_user() -> dict[str, Any]:
        record("get-user", event.data["orderId"])
        return {"id": event.data["userId"], "name": f"user-{event.data['userId']}"}

    user = await ctx.step.run("get-user", get_user)

    await ctx.step.sleep("wait-for-payment", datetime.timedelta(seconds=1))  # seed: "1h"

    # The seed's `match: "data.orderId"`; the Python SDK only has `if_exp`.
    payment = await ctx.step.wait_for_event(
        "wait-payment",
        event="shop/payment.success",
        if_exp="event.data.orderId == async.data.orderId",
        timeout=datetime.timedelta(seconds=4),  # seed: "24h"
    )

    if payment is None:

        async def cancel_order() -> str:
            record("cancel-order", event.data["orderId"])
            return "cancelled"

        await ctx.step.run("cancel-order", cancel_order)

    return {
        "user": user,
        "paid": payment is not None,
        "payment": None if payment is None else {"name": payment.name, "data": payment.data},
    }


# --- 2. Parallelism ------------------------------------------------------------------------------


@client.create_function(
    fn_id="load-dashboard",
    trigger=inngest.TriggerEvent(event="app/dashboard.load"),
)
async def load_dashboard(ctx: inngest.Context) -> dict[str, Any]:
    user_id = ctx.event.data["userId"]

    async def fetch_user() -> dict[str, Any]:
        record("fetch-user", user_id)
        return {"id": user_id, "email": f"{user_id}@example.com"}

    async def fetch_sub() -> dict[str, Any]:
        record("fetch-sub", user_id)
        return {"user": user_id, "plan": "pro"}

    # The seed's `Promise.all([...])`; in the Python SDK 0.5.x: `ctx.group.parallel`.
    user, subscription = await ctx.group.parallel(
        (
            lambda: ctx.step.run("fetch-user", fetch_user),
            lambda: ctx.step.run("fetch-sub", fetch_sub),
        )
    )

    async def combine() -> str:
        record("combine", user_id)
        return f"{user['email']}:{subscription['plan']}"

    summary = await ctx.step.run("combine", combine)
    return {"user": user, "subscription": subscription, "summary": summary}


# --- 3. Loops with dynamic step ids ----------------------------------------------------------


@client.create_function(
    fn_id="process-cart",
    trigger=inngest.TriggerEvent(event="shop/cart.checkout"),
)
async def process_cart(ctx: inngest.Context) -> dict[str, Any]:
    cart_id = ctx.event.data["cartId"]
    processed = []
    for item in ctx.event.data["items"]:

        async def process_item(item: dict[str, Any] = item) -> dict[str, Any]:
            record("process-item", cart_id, item=item["id"])
            return {"id": item["id"], "done": True}

        # Dynamic id to ensure uniqueness per item.
        processed.append(await ctx.step.run(f"process-item-{item['id']}", process_item))

    # The same id in a loop: the SDK makes it unique (`tick`, `tick:1`, `tick:2`).
    ticks = []
    for n in range(3):

        async def tick(n: int = n) -> int:
            record("tick", cart_id, n=n)
            return n

        ticks.append(await ctx.step.run("tick", tick))
    return {"processed": processed, "ticks": ticks}


# --- 4. Automatic retries, NonRetriableError, on_failure -------------------------------------


@client.create_function(
    fn_id="flaky-sync",
    trigger=inngest.TriggerEvent(event="app/flaky.sync"),
    retries=3,
)
async def flaky_sync(ctx: inngest.Context) -> dict[str, Any]:
    key = ctx.event.data["key"]
    attempt = ctx.attempt

    async def flaky_call() -> dict[str, Any]:
        record("flaky-call", key, attempt=attempt)
        if attempt < 2:
            raise RuntimeError(f"flaky failure on attempt {attempt}")
        return {"ok": True, "attempt": attempt}

    result = await ctx.step.run("flaky-call", flaky_call)
    return {"result": result}


@client.create_function(
    fn_id="doomed-call",
    trigger=inngest.TriggerEvent(event="app/doomed.call"),
    retries=1,
)
async def doomed_call(ctx: inngest.Context) -> None:
    key = ctx.event.data["key"]
    attempt = ctx.attempt

    async def call_api() -> None:
        record("call-api", key, attempt=attempt)
        raise RuntimeError("upstream down")

    await ctx.step.run("call-api", call_api)


async def risky_transfer_failed(ctx: inngest.Context) -> dict[str, Any]:
    # ctx.event is `inngest/function.failed`; the original event is in `data.event`.
    error = ctx.event.data["error"]
    original = ctx.event.data["event"]
    transfer_id = original["data"]["transferId"]

    async def rollback_funds() -> str:
        record("rollback-funds", transfer_id)
        return f"reversed {transfer_id}"

    async def notify_admin() -> str:
        message = f"Transfer failed: {error['message']}"
        record("notify-admin", transfer_id, message=message)
        return message

    await ctx.step.run("rollback-funds", rollback_funds)
    alert = await ctx.step.run("notify-admin", notify_admin)
    return {"transferId": transfer_id, "alert": alert,
            "failedFunction": ctx.event.data["function_id"]}


@client.create_function(
    fn_id="risky-transfer",
    trigger=inngest.TriggerEvent(event="bank/transfer.init"),
    on_failure=risky_transfer_failed,  # runs if the main handler fails
)
async def risky_transfer(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def validate() -> bool:
        record("validate", data["transferId"])
        if not data.get("valid"):
            raise inngest.NonRetriableError("Invalid payload")
        return True

    await ctx.step.run("validate", validate)

    async def transfer() -> dict[str, Any]:
        record("transfer", data["transferId"])
        return {"transferred": data["amount"]}

    return await ctx.step.run("transfer", transfer)


# --- 5. Flow control: rate limit + throttle, debounce, priority ------------------------------


@client.create_function(
    fn_id="sync-crm",
    trigger=inngest.TriggerEvent(event="crm/contact.updated"),
    # Max 10 requests per minute per user
    rate_limit=inngest.RateLimit(
        limit=10, period=datetime.timedelta(minutes=1), key="event.data.userId"),
    # Limit starts to 5 per second
    throttle=inngest.Throttle(limit=5, period=datetime.timedelta(seconds=1)),
)
async def sync_crm(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def push() -> int:
        record("sync-crm", data["userId"], seq=data["seq"])
        return int(data["seq"])

    return {"userId": data["userId"], "seq": await ctx.step.run("push-contact", push)}


@client.create_function(
    fn_id="index-product",
    trigger=inngest.TriggerEvent(event="shop/product.updated"),
    # Wait 2s (seed: 10s) for more events; only run with the latest data
    debounce=inngest.Debounce(
        period=datetime.timedelta(seconds=2), key="event.data.productId"),
)
async def index_product(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def index() -> int:
        record("index-product", data["productId"], version=data["version"])
        return int(data["version"])

    return {"productId": data["productId"], "indexedVersion": await ctx.step.run("index", index)}


@client.create_function(
    fn_id="generate-report",
    trigger=inngest.TriggerEvent(event="report/generate"),
    # High number = high priority (the seed's JavaScript-style `===`)
    priority=inngest.Priority(run="event.data.plan === 'enterprise' ? 100 : 0"),
)
async def generate_report(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def build() -> str:
        record("generate-report", data["batch"], plan=data["plan"])
        return f"report for {data['plan']}"

    return {"report": await ctx.step.run("build-report", build)}


@client.create_function(
    fn_id="generate-report-queued",
    trigger=inngest.TriggerEvent(event="report/generate.queued"),
    # The seed's priority, plus a one-at-a-time limit so a backlog forms and priority decides
    # which queued run goes next.
    priority=inngest.Priority(run="event.data.plan === 'enterprise' ? 100 : 0"),
    concurrency=[inngest.Concurrency(limit=1)],
)
async def generate_report_queued(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def build() -> str:
        record("generate-report-queued", data["batch"], plan=data["plan"], n=data["n"])
        await asyncio.sleep(0.3)  # the work itself, inside the step
        return f"report {data['n']} for {data['plan']}"

    return {"report": await ctx.step.run("build-report", build)}


# --- 6. Cancel on event ------------------------------------------------------------------------


@client.create_function(
    fn_id="nurture-lead",
    trigger=inngest.TriggerEvent(event="crm/lead.created"),
    # The TypeScript `cancelOn: [{ event, match: "data.leadId" }]`; Python has `if_exp` only.
    cancel=[inngest.Cancel(event="crm/lead.converted",
                           if_exp="event.data.leadId == async.data.leadId")],
)
async def nurture_lead(ctx: inngest.Context) -> str:
    lead = ctx.event.data["leadId"]

    async def welcome() -> str:
        record("send-welcome", lead)
        return "welcomed"

    async def followup() -> str:
        record("send-followup", lead)
        return "followed up"

    await ctx.step.run("send-welcome", welcome)
    await ctx.step.sleep("wait-before-followup", datetime.timedelta(seconds=30))
    await ctx.step.run("send-followup", followup)
    return "nurtured"


# --- 7. Invoke another function --------------------------------------------------------------


@client.create_function(
    fn_id="compute-total",
    trigger=inngest.TriggerEvent(event="shop/total.compute"),
    retries=0,
)
async def compute_total(ctx: inngest.Context) -> dict[str, Any]:
    items = ctx.event.data["items"]

    async def add_up() -> int:
        if not items:
            raise inngest.NonRetriableError("Cart is empty")
        return sum(int(i["price"]) * int(i["qty"]) for i in items)

    return {"total": await ctx.step.run("add-up", add_up)}


@client.create_function(
    fn_id="checkout",
    trigger=inngest.TriggerEvent(event="shop/checkout.requested"),
)
async def checkout(ctx: inngest.Context) -> dict[str, Any]:
    try:
        result = await ctx.step.invoke(
            "compute-total", function=compute_total, data={"items": ctx.event.data["items"]})
    except inngest.StepError as err:
        return {"error": err.message}
    return {"total": result["total"]}


# --- 8. Send events from a function ---------------------------------------------------------


@client.create_function(
    fn_id="user-signup",
    trigger=inngest.TriggerEvent(event="app/user.signup"),
)
async def user_signup(ctx: inngest.Context) -> dict[str, Any]:
    email = ctx.event.data["email"]
    ids = await ctx.step.send_event(
        "send-welcome-email",
        inngest.Event(name="app/email.requested", data={"to": email, "template": "welcome"}),
    )
    return {"sent": ids}


@client.create_function(
    fn_id="send-email",
    trigger=inngest.TriggerEvent(event="app/email.requested"),
)
async def send_email(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data

    async def deliver() -> str:
        record("deliver-email", data["to"], template=data["template"])
        return f"{data['template']} -> {data['to']}"

    return {"delivered": await ctx.step.run("deliver", deliver)}


# --- 9. AI inference performed by the server (step.ai.infer, the AIGateway opcode) -----------


@client.create_function(
    fn_id="ai-summarize",
    retries=1,
    trigger=inngest.TriggerEvent(event="tools/ai.summarize"),
)
async def ai_summarize(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data
    adapter = ai.openai.Adapter(auth_key=data["apiKey"], base_url=data["baseUrl"],
                                model="gpt-test")
    completion: Any = await ctx.step.ai.infer(
        "summarize", adapter=adapter,
        body={"messages": [{"role": "user", "content": data["text"]}]})
    return {"summary": completion["choices"][0]["message"]["content"],
            "model": completion["model"]}


FUNCTIONS = [
    process_order, load_dashboard, process_cart, flaky_sync, doomed_call, risky_transfer,
    sync_crm, index_product, generate_report, generate_report_queued, nurture_lead,
    compute_total, checkout, user_signup, send_email, ai_summarize,
]

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS)


@app.get("/_test/ledger")
async def ledger() -> list[dict[str, Any]]:
    return LEDGER


# The W3C `traceparent` header of each call the server made to the SDK endpoint, in order.
TRACEPARENTS: list[str] = []


@app.middleware("http")
async def remember_traceparent(request: fastapi.Request, call_next: Any) -> Any:
    if request.url.path == "/api/inngest" and request.method == "POST":
        TRACEPARENTS.append(request.headers.get("traceparent", ""))
    return await call_next(request)


@app.get("/_test/traceparents")
async def traceparents() -> list[str]:
    return TRACEPARENTS


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    sock = socket.create_server((host, port))  # listening now: connections queue until served
    print(f"py-app listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
