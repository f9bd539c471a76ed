"""Queue item kinds and the format of every key the engine stores work and state under.

Named once here, so the runtime that writes them, the store that reads a kind (timers are exec
items; prune keeps what queue items hold) and the tests agree. Pure: no I/O.

Queue items (`unique_key` keeps one item per purpose):

- `exec:<run>`: run or resume a run;
- `cron:<function>:<trigger index>`: fire a schedule's next tick;
- `timeout:<run>:<start|finish>`: enforce `timeouts.start` / `timeouts.finish`;
- `route:<first event>`: route events that a process without functions stored;
- `batch:<function>:<key value>`, `debounce:<function>:<key value>`: a flow-control window.

Flow-control state (`Tx.get_flow` / `put_flow`): `idem:`, `rate:`, `single:`, `throttle:`
followed by `<function>:<key value>`. Concurrency keys held by queue items:
`c:<fn|env|account scope>:<key value>` (`fn` scope: the function's key id).
"""

from __future__ import annotations

from typing import Literal

EXEC = "exec"
CRON = "cron"
TIMEOUT = "timeout"
ROUTE = "route"
BATCH = "batch"
DEBOUNCE = "debounce"
KINDS = (EXEC, CRON, TIMEOUT, ROUTE, BATCH, DEBOUNCE)


def exec_key(run_id: str) -> str:
    return f"{EXEC}:{run_id}"


def timeout_key(run_id: str, which: Literal["start", "finish"]) -> str:
    return f"{TIMEOUT}:{run_id}:{which}"


def cron_key(function_key: str, index: int) -> str:
    return f"{CRON}:{function_key}:{index}"


def route_key(first_event_id: str) -> str:
    return f"{ROUTE}:{first_event_id}"


def batch_key(function_key: str, value: str) -> str:
    return f"{BATCH}:{function_key}:{value}"


def debounce_key(function_key: str, value: str) -> str:
    return f"{DEBOUNCE}:{function_key}:{value}"


def idempotency_key(function_key: str, value: str) -> str:
    return f"idem:{function_key}:{value}"


def rate_limit_key(function_key: str, value: str) -> str:
    return f"rate:{function_key}:{value}"


def singleton_key(function_key: str, value: str) -> str:
    return f"single:{function_key}:{value}"


def throttle_key(function_key: str, value: str) -> str:
    return f"throttle:{function_key}:{value}"


def concurrency_key(scope: str, value: str) -> str:
    return f"c:{scope}:{value}"
