"""Signed, expiring tokens (HMAC-SHA256 over compact JSON claims): what an approval URL and a
stream subscription token carry, so the server can check one without a lookup and nobody can
forge or extend one. A `kind` claim tells them apart. Pure: the time is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any


class TokenError(ValueError):
    """A token that is malformed, forged (its signature does not match) or expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("utf-8", "surrogateescape"),
                         hashlib.sha256).digest())


def sign_token(secret: bytes, claims: dict[str, Any], *, now: float, ttl: float) -> str:
    """A token for `claims`, valid for `ttl` seconds from `now` (epoch seconds)."""
    if ttl <= 0:
        raise ValueError("a token's ttl must be positive")
    payload = dict(claims) | {"exp": int(now + ttl)}
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_mac(secret, body)}"


def verify_token(secret: bytes, token: str, *, now: float) -> dict[str, Any]:
    """The claims of a token this secret signed that has not expired (TokenError otherwise)."""
    body, dot, mac = token.partition(".")
    if not dot or not body or not mac:
        raise TokenError("the token is malformed (expected <claims>.<signature>)")
    if not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"),
                               _mac(secret, body).encode()):
        raise TokenError("the token's signature does not match: it was not issued by this "
                         "server, or it was altered")
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("the token's claims are not valid JSON") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        raise TokenError("the token has no expiry")
    if claims["exp"] <= now:
        raise TokenError("the token has expired")
    return claims
