"""`POST /v1/approvals/{token}`: a human's decision on a run waiting for approval.

A run that needs a person (a Pydantic AI tool with `requires_approval=True` run through
`stepwell.integrations.pydantic_ai`) waits for a signal whose name only the run knows, and
hands out a token signed with the server's secret that names it (`core.signing`). The token is
the credential, so the route needs no API key: a link in an email or chat message works. It is
single-use by construction: the decision resolves the run's wait, and once the wait is gone
the signal finds nobody, so a second use is refused (409), as is a token that is expired,
forged, or of another kind (403). A decision sent in the moment between the notice and the
run recording its wait gets 425 (retry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepwell.core.signing import TokenError, verify_token
from stepwell.runtime.secrets import server_secret
from stepwell.service_errors import Conflict, Forbidden, InvalidInput, TooEarly

if TYPE_CHECKING:
    from stepwell.service import Service

APPROVAL_KIND = "approval"
MAX_REASON = 2000


def parse_decision(body: object) -> dict[str, Any]:
    """`{"approved": true|false, "reason": "..."}` (reason optional, told to the model when
    the call is denied)."""
    if not isinstance(body, dict) or "approved" not in body or set(body) - {"approved",
                                                                             "reason"}:
        raise InvalidInput('the body must be {"approved": true|false} with an optional '
                           '"reason": "<text>"')
    approved = body["approved"]
    if not isinstance(approved, bool):
        raise InvalidInput(f"'approved' must be true or false, got {approved!r}")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise InvalidInput(f"'reason' must be a string of at most {MAX_REASON} characters")
    return {"approved": approved, "reason": reason}


async def decide(service: Service, token: str, body: object) -> dict[str, Any]:
    """Verify the token, then deliver the decision to the run waiting for it."""
    secret = await server_secret(service.worker)
    try:
        claims = verify_token(secret, token, now=service.worker.clock.now() / 1000)
    except TokenError as exc:
        raise Forbidden(f"this approval link is not valid: {exc}") from None
    if claims.get("kind") != APPROVAL_KIND or not isinstance(claims.get("signal"), str):
        raise Forbidden("this token is not an approval token")
    decision = parse_decision(body)
    run_id = await service.engine.send_signal(claims["signal"], decision)
    if run_id is None:
        if await _not_waiting_yet(service, claims):
            raise TooEarly("the run is not waiting for this approval yet (it sends the link "
                           "just before it records the wait): retry in a moment")
        raise Conflict("this approval was already decided, or its run no longer waits for it "
                       "(cancelled, timed out or finished); an approval link works once")
    return {"run_id": run_id, "approved": decision["approved"]}


async def _not_waiting_yet(service: Service, claims: dict[str, Any]) -> bool:
    """Whether the run is still active and has not reached the wait the token names (the
    moment between the notice and the wait; a decided or abandoned wait is a step by then)."""
    run_id, step_id = claims.get("run"), claims.get("step")
    if not isinstance(run_id, str) or not isinstance(step_id, str):
        return False
    run = await service.engine.get_run(run_id)
    return (run is not None and not run.done
            and not any(s.id == step_id for s in run.steps))
