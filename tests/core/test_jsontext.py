"""`encode_with(encoder)` writes exactly what `encoder.encode` writes, and fails the same way
(core/jsontext.py): for every encoder setting stepwell uses, over generated values, and for
the values the fast encoder itself cannot take (cycles, non-JSON types, NaN where refused)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepwell.core.jsontext import encode_with

ENCODERS = {
    "compact": json.JSONEncoder(separators=(",", ":")),
    "strict utf-8": json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                     separators=(",", ":")),
    "sorted": json.JSONEncoder(sort_keys=True, separators=(",", ":")),
    "sorted, default": json.JSONEncoder(sort_keys=True, default=lambda v: type(v).__name__),
    "no circular check": json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                          sort_keys=True, check_circular=False),
}
TEXT = st.text(st.one_of(st.characters(min_codepoint=0, max_codepoint=0x7F),
                         st.sampled_from(["\u2028", "\ue000", "\U0001f600", "é", "\x7f"])),
               max_size=10)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=25)


def outcome(encode: Any, value: Any) -> tuple[str, str]:
    try:
        return "ok", encode(value)
    except (ValueError, TypeError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None)
@given(JSON)
@pytest.mark.parametrize("name", list(ENCODERS))
def test_the_same_text_or_the_same_error(name: str, value: Any) -> None:
    encoder = ENCODERS[name]
    assert outcome(encode_with(encoder), value) == outcome(encoder.encode, value)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_values_the_fast_encoder_cannot_take(name: str) -> None:
    encoder = ENCODERS[name]
    loop: list[Any] = []
    loop.append(loop)
    ring: dict[str, Any] = {}
    ring["self"] = {"up": ring}
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    for value in (loop, ring, deep, {1, 2}, object(), {"x": math.nan}, math.inf, {(1, 2): 3},
                  "plain", "é\u2028"):
        assert outcome(encode_with(encoder), value) == outcome(encoder.encode, value)


def test_a_cycle_is_reported_as_before() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference detected"):
        encode_with(json.JSONEncoder())(loop)


def test_failures_leave_nothing_behind() -> None:
    """An error part-way (a non-JSON value inside a container) must not make a later value
    that shares nothing with it fail: the encoder keeps no state between calls."""
    encode = encode_with(json.JSONEncoder(separators=(",", ":")))
    shared = {"a": [1, 2]}
    with pytest.raises(TypeError):
        encode({"ok": shared, "bad": object()})
    assert encode({"again": shared}) == '{"again":{"a":[1,2]}}'
