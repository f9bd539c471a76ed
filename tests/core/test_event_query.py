"""The runs search's event condition: bare event fields (`data.userId == 42`) mean `event.`."""
from __future__ import annotations

import pytest

from stepwell.core.expressions import ExpressionError, compile_event_query

EVENT = {"id": "e1", "name": "data", "data": {"userId": 42, "name": "x", "id": 7}, "ts": 5}


@pytest.mark.parametrize(("source", "expected"), [
    ("data.userId == 42", True),
    ("event.data.userId == 42", True),
    ("data.userId == 41", False),
    ('name == "data" && data.name == "x" && data.id == 7', True),   # fields after "." stay
    ('"data.userId" == "data.userId"', True),                        # strings untouched
    ("size(data) == 3 && ts == 5", True),
    ("has(data.missing)", False),
])
def test_bare_and_qualified_fields_mean_the_same(source: str, expected: bool) -> None:
    assert compile_event_query(source).matches(EVENT) is expected


def test_a_syntax_error_points_at_what_the_user_typed() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_event_query("data.userId ==")
    assert "'data.userId =='" in str(info.value) and "event." not in str(info.value)
