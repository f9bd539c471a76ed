"""Run Pydantic AI agents durably on stepwell (`pip install 'stepwell[pydantic-ai]'`).

- `StepwellDurability`: the capability to attach to the agent; every model request and tool
  call becomes a `step.run` (retried, memoized, replay-safe), and each model request records
  its tokens on the run.
- `StepwellAgent(agent).run(step, ctx, prompt, ...)`: run it inside a stepwell function.
- `StepwellApproval(notify=...)`: tool calls that need a person wait durably for a decision
  sent to a signed, single-use URL (`POST /v1/approvals/{token}`).
- `stream_handler()`: publish the agent's events to a durable stream.

This package imports Pydantic AI; `import stepwell` does not import this package.
"""

from stepwell.integrations.pydantic_ai._agent import StepwellAgent, event_json, stream_handler
from stepwell.integrations.pydantic_ai._approvals import ApprovalRequest, StepwellApproval
from stepwell.integrations.pydantic_ai._durability import StepwellDurability

__all__ = ["ApprovalRequest", "StepwellAgent", "StepwellApproval", "StepwellDurability",
           "event_json", "stream_handler"]
