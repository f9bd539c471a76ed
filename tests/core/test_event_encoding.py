"""An event is JSON-encoded once on its way in (issue 13): `normalize_send` encodes it in parts
to check it and measure it, and the store writes the data's text from then on. These pin that
the parts add up to the whole (the size limit is unchanged) and that the stored text is the
codec's, byte for byte."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from stepwell.core import jsonsafe
from stepwell.core.models import (
    InvalidEventError,
    normalize_send,
    stored_data_json,
    validate_event_payload,
)
from stepwell.store.codec import dumps

SAFE = 2**53 - 1
chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
text = st.text(chars, max_size=8)
leaves = (st.none() | st.booleans() | st.integers(-SAFE, SAFE)
          | st.floats(allow_nan=False, allow_infinity=False) | text)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(text, inner, max_size=3), max_leaves=12)


@given(data=st.dictionaries(text, values, max_size=4),
       user=st.none() | st.dictionaries(text, values, max_size=2),
       with_id=st.booleans())
def test_the_size_in_parts_is_the_size_of_the_whole(data: dict[str, Any],
                                                    user: dict[str, Any] | None,
                                                    with_id: bool) -> None:
    event: dict[str, Any] = {"name": "shop/order", "data": data}
    if user is not None:
        event["user"] = user
    if with_id:
        event["id"] = "e-1"
    whole = len(jsonsafe.dumps_checked(event))
    assert validate_event_payload(event) == whole


@given(data=st.dictionaries(text, values, max_size=4))
def test_the_stored_text_is_the_codecs(data: dict[str, Any]) -> None:
    _, (event,) = normalize_send(({"name": "a/b", "data": data},))
    kept = stored_data_json(event)
    if kept is not None:                # kept only when ASCII without DEL (then identical)
        assert kept == dumps(event.data)
    else:
        text = jsonsafe.dumps_checked(data)
        assert not text.isascii() or b"\x7f" in text


def test_a_del_character_is_left_to_the_codec() -> None:
    """U+007F is ASCII, but the codec escapes it (`ensure_ascii`): the validation's text,
    which keeps it raw, is not stored (found by the property above)."""
    _, (event,) = normalize_send(({"name": "a/b", "data": {"\x7f": None}},))
    assert stored_data_json(event) is None
    assert dumps(event.data) == '{"\\u007f":null}'


def test_a_replaced_data_object_is_encoded_again() -> None:
    _, (event,) = normalize_send(({"name": "a/b", "data": {"k": 1}},))
    assert stored_data_json(event) == '{"k":1}'
    event.data = {"k": 2}
    assert stored_data_json(event) is None     # the store then encodes the new object


def test_unsafe_integers_are_still_found_and_named() -> None:
    for data, where in (({"n": 2**53}, "data.n"), ({"a": [1, {"b": -(2**60)}]}, "data.a[1].b")):
        try:
            validate_event_payload({"name": "a/b", "data": data})
        except InvalidEventError as exc:
            assert where in str(exc)
        else:
            raise AssertionError(f"{data} was accepted")
    # 16 digits that are not an unsafe integer (a string, a safe one) pass.
    assert validate_event_payload({"name": "a/b", "data": {"s": "1234567890123456",
                                                           "n": SAFE}}) > 0


def test_a_broken_value_is_named_by_its_path_as_before() -> None:
    for event, where in (({"name": "a/b", "data": {"x": float("nan")}}, "data.x"),
                         ({"name": "a/b", "data": {}, "user": {"u": "\ud800"}}, "user.u")):
        try:
            validate_event_payload(event)
        except InvalidEventError as exc:
            assert f"'{where}'" in str(exc), exc
        else:
            raise AssertionError(f"{event} was accepted")
