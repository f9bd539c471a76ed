"""`StepwellApproval`: a human approves or denies a Pydantic AI agent's tool calls
(`requires_approval=True`, or a tool raising `ApprovalRequired`) while the stepwell run waits.

Pydantic AI hands pending approvals to capabilities (`handle_deferred_tool_calls`) inside the
agent's run, which here is the stepwell handler: so the wait is an ordinary durable wait.
Each time calls need a decision:

1. a step makes a signed token (the server's secret, `core.signing`) naming a signal only this
   run knows (a random nonce, recorded, so a replay reuses the same one);
2. a step calls `notify` with an `ApprovalRequest` (the calls, the token and its URL path),
   once: a replay does not notify again;
3. `step.wait_for_signal` waits, holding no worker, until `POST /v1/approvals/{token}` with
   `{"approved": true|false, "reason": ...}` decides (single-use: the wait is then gone), or
   until `timeout`, when every call is denied with a message saying so.

The decision covers every call of that request; the model is told a denied call's reason.
"""

from __future__ import annotations

import datetime
import inspect
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.tools import (
    AgentDepsT,
    DeferredToolRequests,
    DeferredToolResults,
    RunContext,
    ToolDenied,
)

from stepwell.core.durations import parse_duration_ms
from stepwell.integrations.pydantic_ai._durability import current_scope
from stepwell.sdk.context import current_signer

__all__ = ["ApprovalRequest", "StepwellApproval"]

APPROVAL_PATH = "/v1/approvals/"


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What `notify` gets: who asks, for which calls, and the link that answers."""

    run_id: str
    token: str
    calls: list[dict[str, Any]]            # each {"tool_call_id", "tool_name", "args"}
    expires_at: str                        # ISO 8601, when the token (and the wait) end

    @property
    def path(self) -> str:
        """The URL path to POST the decision to, on the stepwell server's base URL."""
        return APPROVAL_PATH + self.token


@dataclass
class StepwellApproval(AbstractCapability[AgentDepsT]):
    """Ask a person to approve tool calls, and wait durably for the answer.

        approval = StepwellApproval(notify=post_to_slack, timeout="2d")
        agent = Agent(model, name="ops", capabilities=[StepwellDurability(), approval])

    `notify(request: ApprovalRequest)` (sync or async) delivers the link (`request.path` on
    your server's URL); it runs in a step, so it is retried when it raises and not repeated on
    replay. Outside a durable run the capability does nothing (the calls stay deferred, as
    Pydantic AI does without it)."""

    notify: Callable[[ApprovalRequest], Awaitable[None] | None]
    timeout: str | int | float | datetime.timedelta = "7d"
    name: str = "approval"
    _ttl_ms: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        self._ttl_ms = parse_duration_ms(self.timeout, what="approval timeout")
        if self._ttl_ms <= 0:
            raise ValueError("StepwellApproval: timeout must be positive")

    async def handle_deferred_tool_calls(self, ctx: RunContext[AgentDepsT], *,
                                         requests: DeferredToolRequests
                                         ) -> DeferredToolResults | None:
        scope = current_scope()
        if scope is None or not requests.approvals:
            return None
        sign = current_signer.get()
        if sign is None:
            raise RuntimeError("StepwellApproval needs a stepwell run (no signer here)")
        step, run_id, ttl = scope.step, scope.run_id, self._ttl_ms / 1000
        calls = [{"tool_call_id": c.tool_call_id, "tool_name": c.tool_name,
                  "args": c.args_as_dict()} for c in requests.approvals]
        base = f"{ctx.agent.name if ctx.agent else 'agent'}__{self.name}"

        async def make_token() -> dict[str, Any]:
            signal = f"approval:{run_id}:{secrets.token_urlsafe(18)}"
            token = await sign({"kind": "approval", "run": run_id, "signal": signal,
                                "step": f"{base}.wait",
                                "calls": [c["tool_call_id"] for c in calls]}, ttl)
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
            return {"signal": signal, "token": token, "expires_at": expires.isoformat()}

        made = await step.run(f"{base}.token", make_token)

        async def deliver() -> None:
            result = self.notify(ApprovalRequest(run_id, made["token"], calls,
                                                 made["expires_at"]))
            if inspect.isawaitable(result):
                await result

        await step.run(f"{base}.notify", deliver)
        got = await step.wait_for_signal(f"{base}.wait", signal=made["signal"],
                                         timeout=self._ttl_ms / 1000)
        ids = [c.tool_call_id for c in requests.approvals]
        if got is None:
            denied = ToolDenied(f"No one approved this tool call within {self.timeout}.")
            return requests.build_results(approvals=dict.fromkeys(ids, denied))
        decision = got.get("data") or {}
        if decision.get("approved") is True:
            return requests.build_results(approvals=dict.fromkeys(ids, True))
        reason = decision.get("reason") or "A person denied this tool call."
        return requests.build_results(approvals=dict.fromkeys(ids, ToolDenied(str(reason))))
