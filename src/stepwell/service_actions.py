"""Acting on functions from outside a run: `POST /v1/functions/{id}/invoke` (the dashboard's
"Invoke", `stepwell invoke`), which starts one run of a function with a payload.

The run is started as `step.invoke` starts a child run (an `inngest/function.invoked` event
holding the data, stored already processed so no other function is triggered by it), through
the function's flow control (singleton, throttle, concurrency), but with no parent to resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepwell.core.models import FUNCTION_INVOKED, Event
from stepwell.runtime import admission, scripts

if TYPE_CHECKING:
    from stepwell.service import Service


async def invoke_function(service: Service, function_id: str, body: object) -> dict[str, Any]:
    """Start a run of `function_id` with `{"data": {...}}` as its event's data; returns
    `{"run_id", "event_id"}`. Unknown function: 404; bad body: 400; skipped (singleton): 409.
    A run that flow control ended at once (a key the data lacks) is returned: it says why."""
    from stepwell.service_errors import Conflict, InvalidInput, NotFound
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {"data"}:
        raise InvalidInput('the body must be {"data": {...}} (the invoked run\'s event data)')
    data = body.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidInput(f"'data' must be a JSON object, got {type(data).__name__}")
    engine = service.worker
    fn = engine.find_function(function_id)
    if fn is None:
        known = ", ".join(sorted(qid for qid, _ in engine.registry.items())) or "none"
        raise NotFound(f"no function {function_id!r} is registered (known: {known})")
    now = engine.clock.now()
    event = Event(name=FUNCTION_INVOKED, data=dict(data), id=scripts.new_id(), ts=now)
    spec, routing = fn.spec, engine.routing

    def start(tx: Any, place: Any, effects: Any) -> str | None:
        tx.insert_event(event, now, now, processed=True)
        return admission.start_run(tx, spec, [event], now, place, effects, routing=routing)

    run_id = await engine.commit(start)
    if run_id is None:
        # A flow-control key the data cannot give (throttle `event.data.user` missing) ends
        # the run at once, failed with the reason: that run is the answer.
        ended = await service.engine.runs(event_id=event.id, limit=1)
        if ended:
            return {"run_id": ended[0].id, "event_id": event.id}
        raise Conflict(f"the invocation of {function_id} was skipped: the function's singleton "
                       "setting allows one active run for its key")
    return {"run_id": run_id, "event_id": event.id}
