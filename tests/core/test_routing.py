"""Reading a dotted path of an event, as `match` waits and `cancel_on` rules index it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepwell.core.routing import match_key, path_value

EVENT: dict[str, Any] = {
    "name": "shop/order.created",
    "data": {"orderId": "o-1", "userId": 7, "note": None, "nested": {"deep": {"value": 1.0}},
             "text": "hello", "items": [{"sku": "a"}]},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.orderId", "o-1"),
        ("data.userId", 7),
        ("data.note", None),
        ("data.nested.deep", {"value": 1.0}),
        ("name", "shop/order.created"),
        ("data.nope", None),              # absent
        ("data.text.length", None),       # not a mapping
        ("data.items.0", None),           # lists are not indexed
        ("nope.x", None),
    ],
)
def test_path_value(path: str, expected: Any) -> None:
    assert path_value(EVENT, path) == expected


def test_an_absent_path_and_a_null_value_index_the_same_key() -> None:
    """A wait's index key is built from its run's event: an absent path is indexed as null."""
    assert path_value({"a": None}, "a") is None
    assert path_value({"a": {}}, "a.b") is None
    assert match_key("data.x", path_value({"data": {}}, "data.x")) == "data.x=null"


@pytest.mark.parametrize("value", [
    "o-1", "", "é\u2028\x00\"\\", "\ud800", 7, -5, 2**70, True, False, None, 1.0, 1.5e300,
    [1, {"b": 2, "a": 1}], {"z": 1, "a": [None]}])
def test_match_key_is_the_sorted_compact_json_stored_keys_were_made_with(value: Any) -> None:
    """Waits stored by earlier versions hold `path=json.dumps(value, sort_keys=True,
    separators=(",", ":"))`: the fast paths for strings and integers must spell it exactly."""
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert match_key("data.orderId", value) == f"data.orderId={expected}"
