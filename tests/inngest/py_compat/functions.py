"""Functions of the compatibility app on the official Python SDK, shared by its FastAPI entry
point (`fastapi_app.py`) and its Flask one (`flask_app.py`), written as the SDK's docs write
them. Their ids hold slashes, unicode and punctuation, as Inngest allows.

Each function exercises one behaviour the Inngest dev server has (see
tests/inngest/test_compat.py). `LEDGER` records what steps and handlers did, for the tests.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import inngest
from inngest.experimental import ai

APP_ID = os.environ.get("COMPAT_APP_ID", "py-compat")
DEV = os.environ.get("INNGEST_DEV", "").strip().lower() not in ("", "0", "false")
client = inngest.Inngest(app_id=APP_ID, is_production=not DEV)

LEDGER: list[dict[str, Any]] = []
_LOCK = threading.Lock()
_SEEN: dict[str, int] = {}
_FLAGS: dict[str, threading.Event] = {}

CRAZY_ID = "crazy%$^&*(_+{|:<?☃️"


def record(kind: str, key: Any, **extra: Any) -> None:
    with _LOCK:
        LEDGER.append({"kind": kind, "key": key, "t": time.time(), **extra})


def first_time(key: str) -> bool:
    """True the first time `key` is seen in this process."""
    with _LOCK:
        _SEEN[key] = _SEEN.get(key, 0) + 1
        return _SEEN[key] == 1


def flag(key: str) -> threading.Event:
    with _LOCK:
        return _FLAGS.setdefault(key, threading.Event())


# --- ids with slashes, unicode and punctuation ----------------------------------------------


@client.create_function(fn_id="billing/charge", trigger=inngest.TriggerEvent(event="compat/charge"))
def charge(ctx: inngest.ContextSync) -> dict[str, Any]:
    amount = ctx.event.data["amount"]

    def do_charge() -> dict[str, Any]:
        record("charge", ctx.event.data.get("key"), amount=amount)
        return {"charged": amount}

    return ctx.step.run("charge/card ☃", do_charge)


@client.create_function(fn_id=CRAZY_ID, trigger=inngest.TriggerEvent(event="compat/crazy"))
def crazy(ctx: inngest.ContextSync) -> dict[str, Any]:
    def echo() -> str:
        return f"hello {ctx.event.data['who']}"

    return {"said": ctx.step.run("say", echo), "fn": CRAZY_ID}


# --- retry attempts per unit of work -----------------------------------------------------------


@client.create_function(fn_id="retry/per-unit", retries=1,
                        trigger=inngest.TriggerEvent(event="compat/units"))
def per_unit(ctx: inngest.ContextSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    ctx.step.run("one", lambda: record("step-one", key) or 1)
    # Code outside steps after step "one": fails once (a transient error), then goes on.
    record("unit-a", key, attempt=ctx.attempt)
    if first_time(f"{ctx.run_id}:a"):
        raise RuntimeError("transient failure after step one")
    ctx.step.run("two", lambda: record("step-two", key) or 2)
    # A new unit of work: its attempts start again at 0, so this failure is retried too.
    record("unit-b", key, attempt=ctx.attempt)
    if first_time(f"{ctx.run_id}:b"):
        raise RuntimeError("transient failure after step two")
    return {"ok": True}


# --- a failed run's output is the SDK's error body ---------------------------------------------


@client.create_function(fn_id="errors/non-retriable",
                        trigger=inngest.TriggerEvent(event="compat/nonretriable"))
def non_retriable(ctx: inngest.ContextSync) -> None:
    ctx.step.run("before", lambda: 1)
    raise inngest.NonRetriableError("the card was declined")


# --- x-inngest-no-retry on a StepError ---------------------------------------------------------


@client.create_function(fn_id="steps/no-retry", retries=3,
                        trigger=inngest.TriggerEvent(event="compat/noretry"))
def step_no_retry(ctx: inngest.ContextSync) -> dict[str, Any]:
    key = ctx.event.data["key"]

    def refuse() -> None:
        # A step inside a step: the SDK reports the outer step's error as not retriable
        # (a StepError op with `x-inngest-no-retry: true`).
        record("refuse", key, attempt=ctx.attempt)
        ctx.step.run("inner", lambda: None)

    try:
        ctx.step.run("refuse", refuse)
    except inngest.StepError as err:
        return {"caught": err.message}
    return {"caught": None}


# --- parallel_mode=RACE ----------------------------------------------------------------------


@client.create_function(fn_id="parallel_steps/race",
                        trigger=inngest.TriggerEvent(event="compat/race"))
def race(ctx: inngest.ContextSync) -> dict[str, Any]:
    key = ctx.event.data["key"]

    def fast_chain() -> str:
        ctx.step.run("fast-1", lambda: record("fast-1", key) or "f1")

        def fast_2() -> str:
            record("fast-2", key)
            flag(key).set()
            return "f2"

        return str(ctx.step.run("fast-2", fast_2))

    def slow() -> str:
        # Finishes only once the fast branch's second step ran (or gives up after 20 s):
        # in race mode that step runs while this one is still running.
        saw = flag(key).wait(timeout=20)
        record("slow", key, saw_fast_2=saw)
        return "saw fast-2" if saw else "fast-2 had not run"

    fast, slow_result = ctx.group.parallel(
        (fast_chain, lambda: ctx.step.run("slow", slow)),
        parallel_mode=inngest.ParallelMode.RACE)
    return {"fast": fast, "slow": slow_result}


# --- a run-ending error in a targeted call -------------------------------------------------


@client.create_function(fn_id="parallel_steps/child", retries=0,
                        trigger=inngest.TriggerEvent(event="compat/unexpected"))
def unexpected(ctx: inngest.ContextSync) -> str:
    # Not deterministic on purpose: from the second request on, a step appears before the
    # parallel group, so the targeted call for "a" reaches that step instead (the SDK
    # answers 500 `step_unexpected`).
    with _LOCK:
        n = _SEEN.get(ctx.run_id, 0)
        _SEEN[ctx.run_id] = n + 1
    if n > 0:
        ctx.step.run(f"pre-{n}", lambda: "pre")
    ctx.group.parallel((lambda: ctx.step.run("a", lambda: "a"),
                        lambda: ctx.step.run("b", lambda: "b")))
    return "unreachable"


# --- step.invoke of an unknown function ----------------------------------------------------


@client.create_function(fn_id="invoke/missing",
                        trigger=inngest.TriggerEvent(event="compat/missing"))
def invoke_missing(ctx: inngest.ContextSync) -> dict[str, Any]:
    try:
        ctx.step.invoke_by_id("call", app_id=APP_ID, function_id="does/not-exist", data={})
    except inngest.StepError as err:
        return {"name": err.name, "message": err.message}
    return {"name": None, "message": None}


@client.create_function(fn_id="invoke/charge", trigger=inngest.TriggerEvent(event="compat/invoke"))
def invoke_charge(ctx: inngest.ContextSync) -> Any:
    return ctx.step.invoke("call", function=charge, data={"amount": ctx.event.data["amount"]})


# --- step.ai.infer (Anthropic format: the key goes in X-Api-Key) ------------------------------


@client.create_function(fn_id="ai/anthropic", trigger=inngest.TriggerEvent(event="compat/ai"))
def ai_anthropic(ctx: inngest.ContextSync) -> Any:
    adapter = ai.anthropic.Adapter(auth_key=ctx.event.data["key"],
                                   base_url=ctx.event.data["base_url"], model="claude-test")
    return ctx.step.ai.infer("ask", adapter=adapter, body={
        "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})


# --- bulk cancellation -----------------------------------------------------------------------


@client.create_function(fn_id="cancel/me", trigger=inngest.TriggerEvent(event="compat/wait"))
def wait_long(ctx: inngest.ContextSync) -> Any:
    import datetime

    return ctx.step.wait_for_event("never", event="compat/never",
                                   timeout=datetime.timedelta(hours=1))


FUNCTIONS = [charge, crazy, per_unit, non_retriable, step_no_retry, race, unexpected,
             invoke_missing, invoke_charge, ai_anthropic, wait_long]

if os.environ.get("COMPAT_BAD_FUNCTION"):
    # A function stepwell refuses (a cron that is not one): the whole sync is refused, and
    # the server says which function and why.
    @client.create_function(fn_id="reports/nightly ☾",
                            trigger=inngest.TriggerCron(cron="every night at nine"))
    def bad_cron(ctx: inngest.ContextSync) -> None:
        return None

    FUNCTIONS.append(bad_cron)
