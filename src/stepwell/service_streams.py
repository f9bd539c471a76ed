"""Durable streams over the service layer: minting subscription tokens (`POST
/v1/stream-tokens`) and checking the one a subscriber brings (`GET /v1/streams/{channel}`).

A token names one channel (and optionally its topics) and expires; it is signed with the
database's server secret (`runtime.secrets`), so a browser can hold it without any other
credential, and every process serving the database accepts it. Reading is `Engine.stream_items`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stepwell.core import streams
from stepwell.core.signing import TokenError, verify_token
from stepwell.runtime.secrets import server_secret
from stepwell.service_errors import Forbidden, InvalidInput, ServiceError
from stepwell.service_views import iso

if TYPE_CHECKING:
    from stepwell.service import Service

class BadToken(ServiceError):
    """No token where one is needed, or one that is malformed, forged or expired."""

    status = 401


async def mint_token(service: Service, body: object) -> dict[str, Any]:
    """`{"channel": "...", "topics"?: [...], "ttl"?: "1h" | seconds}` -> a token for it."""
    if not isinstance(body, dict) or "channel" not in body or set(body) - {
            "channel", "topics", "ttl"}:
        raise InvalidInput('the body must be {"channel": "<name>"} with optional "topics": '
                           '["<topic>", ...] and "ttl": "1h" (at most 7d)')
    try:
        token = await service.engine.stream_token(body["channel"], topics=body.get("topics"),
                                                  ttl=body.get("ttl", "1h"))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    claims = verify_token(await server_secret(service.worker), token,
                          now=service.worker.clock.now() / 1000)
    return {"token": token, "channel": body["channel"], "topics": body.get("topics"),
            "expires_at": iso(claims["exp"] * 1000)}


async def authorize(service: Service, channel: str, token: str) -> set[str] | None:
    """The topics `token` lets its holder read on `channel` (None: all). 401 for a token
    that is not valid, 403 for a valid one of another channel or kind."""
    try:
        streams.check_name("channel", channel)
    except streams.StreamNameError as exc:
        raise InvalidInput(str(exc)) from None
    secret = await server_secret(service.worker)
    try:
        claims = verify_token(secret, token, now=service.worker.clock.now() / 1000)
    except TokenError as exc:
        raise BadToken(f"this stream token is not valid: {exc}; mint one with "
                       "POST /v1/stream-tokens (Engine.stream_token)") from None
    try:
        return streams.granted_topics(claims, channel)
    except PermissionError as exc:
        raise Forbidden(str(exc)) from None


def parse_start(from_param: str | None, last_event_id: str | None) -> int:
    """The offset to read after: `Last-Event-ID` (a reconnecting EventSource: the last item
    it got) wins over `?from=N` (the first offset wanted); 0 reads from the start."""
    if last_event_id:
        return _offset(last_event_id, "the Last-Event-ID header")
    if from_param:
        return max(_offset(from_param, "'from'") - 1, 0)
    return 0


def _offset(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{what} must be a stream offset (a whole number >= 0), "
                           f"got {value[:40]!r}")
    return int(value)
