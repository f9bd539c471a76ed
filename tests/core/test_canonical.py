"""`canonical_json` writes exactly what `rfc8785` writes (the bytes SDKs verify signatures
over), whichever of its two paths a value takes, and rejects what JCS cannot represent."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from stepwell.core.canonical import canonical_json

# Strings that stress escaping and key order: control characters, quotes, backslashes, DEL,
# characters on either side of the surrogate range, and characters beyond the BMP.
TEXT = st.text(st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x7F),
    st.sampled_from(["\u2028", "\ud7ff", "\ue000", "\uffff", "\U0001f600", "é", "日"]),
    st.characters(blacklist_categories=("Cs",))), max_size=12)
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([0.0, -0.0, 1.0, 1e-4, 1e-5, 1e16, 1e21, 123.456, 0.1 + 0.2,
                                    5e-324, 1.7976931348623157e308, 1e15 + 0.5]))
INTS = st.one_of(st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
                 st.sampled_from([0, -1, 2**53 - 1, -(2**53) + 1]))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(TEXT, inner, max_size=5)),
    max_leaves=30)


@settings(max_examples=1500, deadline=None)
@given(JSON)
def test_the_same_bytes_as_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize("value", [
    {"b": 1, "a": [0.5, "x\n\u0001\"\\"], "é": None, "\ue000": 1, "\U0001f600": 2},
    [1.0, -0.0, 1e21, 1e-7, 2.5, True, False],
    ("tuple", 1),
    {"user": {"id": 42, "tags": ["a", "b"], "score": 12.75}},
])
def test_examples_match_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def _cycle() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def test_shared_and_deep_values_match_and_a_cycle_is_refused() -> None:
    event = {"name": "e", "data": {"n": 1}}
    shared = {"event": event, "events": [event, event]}     # one dict three times: no cycle
    assert canonical_json(shared) == rfc8785.dumps(shared)
    assert canonical_json(_deep(200)) == rfc8785.dumps(_deep(200))
    with pytest.raises((ValueError, RecursionError)):
        canonical_json(_cycle())


@pytest.mark.parametrize("value", [
    2**53, -(2**53), {"n": [2**60]}, float("nan"), float("inf"), "lone \ud800 surrogate",
    {"k": {1, 2}}, {1: "int key"},
])
def test_what_jcs_cannot_represent_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(value)
