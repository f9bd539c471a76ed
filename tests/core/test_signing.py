"""Signed, expiring tokens (`core.signing`): what a token carries comes back only with the
secret that signed it, before it expires; anything else is a TokenError saying which."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepwell.core.signing import TokenError, sign_token, verify_token

SECRET = b"s" * 32


def test_a_token_verifies_until_it_expires() -> None:
    token = sign_token(SECRET, {"kind": "approval", "run": "r1"}, now=1000.0, ttl=60)
    assert verify_token(SECRET, token, now=1059.0) == {"kind": "approval", "run": "r1",
                                                       "exp": 1060}
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, now=1060.0)


def test_another_secret_or_altered_claims_do_not_verify() -> None:
    token = sign_token(SECRET, {"run": "r1"}, now=0, ttl=60)
    with pytest.raises(TokenError, match="signature"):
        verify_token(b"t" * 32, token, now=1)
    other = sign_token(SECRET, {"run": "r2"}, now=0, ttl=60)
    forged = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, forged, now=1)


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl"):
        sign_token(SECRET, {}, now=0, ttl=0)


@given(st.text())
def test_any_text_is_refused_with_a_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, text, now=0)
