from __future__ import annotations

from types import MappingProxyType
from typing import Any

import cel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepwell.core.expressions import (
    Expression,
    ExpressionError,
    ExpressionEvalError,
    compile_expression,
    match_expression,
)

EVENT: dict[str, Any] = {
    "name": "shop/order.created",
    "id": "01HZX",
    "ts": 1_700_000_000_000,
    "user": {},
    "data": {
        "orderId": "o-1",
        "userId": 7,
        "total": 150.5,
        "count": 150,
        "plan": "enterprise",
        "email": "Ada@Example.COM",
        "note": None,
        "flag": True,
        "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 5}],
        "tags": ["x", "y"],
        "nested": {"deep": {"value": 1.0}},
        "text": "hello",
        "in": "reserved",
    },
}
ASYNC: dict[str, Any] = {
    "name": "shop/order.paid",
    "data": {"orderId": "o-1", "userId": 7, "plan": "free"},
}


def with_data(**data: Any) -> dict[str, Any]:
    return {"name": "e", "data": data}


# ---------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # numbers: int vs double compare as real numbers
        ("event.data.total > 100", True),
        ("event.data.count > 100", True),
        ("event.data.total > 150", True),
        ("event.data.count > 150.0", False),
        ("event.data.count == 150.0", True),
        ("event.data.count >= 150.0", True),
        ("event.data.total < 151", True),
        ("event.data.nested.deep.value == 1", True),
        ("event.ts < 1704067200000", True),
        # === / !==, also next to other tokens and inside ternaries
        ("event.data.plan === 'enterprise' ? 100 : 0", 100),
        ("event.data.plan === 'free' ? 100 : 0", 0),
        ("event.data.plan!=='free'", True),
        ("event.data.userId===7&&event.data.plan!=='x'", True),
        ("event.data.userId === async.data.userId", True),
        # literals that contain === are left alone
        ("'a===b'", "a===b"),
        ("\"x!==y\" + '==='", "x!==y==="),
        ('\'it\\\'s === \' + "say \\"!==\\""', 'it\'s === say "!=="'),
        ("r'\\' + '==='", "\\==="),
        ("'''a'===b''' + \"\"\"c\"!==\"\"\"", "a'===bc\"!=="),
        ("// don't === touch\nevent.data.userId === 7", True),
        # logic, strings, macros
        ("event.data.flag && !(event.data.plan == 'free')", True),
        ("event.data.plan == 'free' || event.data.userId == 7", True),
        ("event.data.orderId + '-' + event.data.plan", "o-1-enterprise"),
        ("has(event.data.note)", True),
        ("has(event.data.nope)", False),
        ("has(event.data.nested.deep)", True),
        ("size(event.data.items)", 2),
        ("event.data.text.size()", 5),
        ("event.data.plan in ['enterprise', 'pro']", True),
        ("event.data.plan in ['free']", False),
        ("'x' in event.data.tags", True),
        ("'plan' in event.data", True),
        ("event.data.items.exists(i, i.qty > 4)", True),
        ("event.data.items.all(i, i.qty > 4)", False),
        ("event.data.items.map(i, i.sku)", ["a", "b"]),
        ("event.data.items.filter(i, i.qty > 2).size()", 1),
        ("event.data.items[1].sku", "b"),
        ("event['data']['plan']", "enterprise"),
        ("event . data . plan", "enterprise"),
        ("event.data.email.startsWith('Ada')", True),
        ("lowercase(event.data.email)", "ada@example.com"),
        ("uppercase(event.data.plan) == 'ENTERPRISE'", True),
        # nulls
        ("event.data.note == null", True),
        ("event.data.note", None),
        ("event.data.note != 'x'", True),
        # plain values come back with their JSON type
        ("event.data.userId", 7),
        ("event.data.total", 150.5),
        ("event.data.flag", True),
        ("event.data.tags", ["x", "y"]),
        ("event.data.nested", {"deep": {"value": 1.0}}),
        ("event.name", "shop/order.created"),
        ("'\"openai\"'", '"openai"'),
        ("event.data.userId + 1", 8),
        ("size(event.data)", len(EVENT["data"])),
        ("event.data['in']", "reserved"),
    ],
)
def test_evaluate(source: str, expected: Any) -> None:
    result = compile_expression(source).evaluate(EVENT, ASYNC)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("optional.of(1)", 1),
        ("optional.none()", None),
        ("timestamp('2024-05-01T12:00:00Z')", "2024-05-01T12:00:00Z"),
        ("duration('90m')", "5400s"),
        ("duration('-1.5s')", "-1.5s"),
        ("duration('0s')", "0s"),
        ("b'abc'", "abc"),
        ("{'at': [timestamp('2024-05-01T12:00:00.5Z')]}", {"at": ["2024-05-01T12:00:00.500000Z"]}),
        ("1u", 1),
    ],
)
def test_results_are_converted_to_plain_python(source: str, expected: Any) -> None:
    result = compile_expression(source).evaluate(None)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "event", "expected"),
    [
        ("event.data.total > 100", with_data(total=150.5), True),
        ("event.data.total > 100", with_data(total=150), True),
        ("event.data.total > 100", with_data(total=99.9), False),
        ("event.data.total > 100", with_data(total="150"), False),  # mixed ordering
        ("event.data.x == 'a'", with_data(x=1), False),  # mixed equality
        ("event.data.x == 1", with_data(x="1"), False),
        ("event.data.x == 1", with_data(x=True), False),
        ("event.data.x > 5", with_data(x="str"), False),
        ("event.data.x > 5", with_data(x=None), False),
        ("event.data.x == null", with_data(x=None), True),
        ("event.data.x == null", with_data(x=0), False),
        ("event.data.nope == 1", with_data(x=1), False),  # missing key
        ("event.data.x.y == 1", with_data(x="not a map"), False),
        ("event.data.x.y == 1", with_data(x=[1]), False),
        ("event.data.x", with_data(x=1), False),  # truthy but not a bool
        ("event.data.x", with_data(x="true"), False),
        ("event.data.x", with_data(x=True), True),
        ("event.data.x + 1 > 1", with_data(x=1.5), False),  # double + int is an error in CEL
        ("event.data.x / 0 == 1", with_data(x=1), False),
        ("lowercase(event.data.x) == 'a'", with_data(x=1), False),
        ("event.data.x == 1 || event.data.nope == 1", with_data(x=1), True),
        ("event.data.nope == 1 && event.data.x == 2", with_data(x=1), False),
        ("event.data.x == 'a'", {}, False),
        ("event.data.x == 'a'", None, False),
    ],
)
def test_matches(source: str, event: dict[str, Any] | None, expected: bool) -> None:
    assert compile_expression(source).matches(event) is expected


def test_map_results_have_a_stable_key_order() -> None:
    # The library returns map entries in a varying order; keys built from them must not vary.
    expr = compile_expression("{'b': 1, 'a': 2, 'c': event.data.nested, 1: 0}")
    for _ in range(20):
        result = expr.evaluate(EVENT)
        assert list(result) == [1, "a", "b", "c"]
        assert list(result["c"]) == ["deep"]


def test_matches_with_async_event() -> None:
    expr = compile_expression("event.data.orderId == async.data.orderId")
    assert expr.matches(EVENT, ASYNC) is True
    assert expr.matches(EVENT, with_data(orderId="o-2")) is False
    assert expr.matches(EVENT, None) is False
    assert expr.matches(EVENT) is False


def test_missing_variables_are_bound_to_empty_maps() -> None:
    assert compile_expression("size(event) + size(async)").evaluate(None) == 0
    assert compile_expression("has(async.data)").evaluate(EVENT) is False


def test_accepts_any_mapping() -> None:
    event = MappingProxyType({"data": {"x": 1}})
    assert compile_expression("event.data.x == 1").matches(event) is True
    assert compile_expression("size(event)").evaluate(event) == 1


@pytest.mark.parametrize(
    ("source", "event", "fragment"),
    [
        ("event.data.nope == 1", EVENT, "no such key 'nope'"),
        ("event.data.text > 5", EVENT, "TypeError"),
        ("event.data.total + 1", EVENT, "TypeError"),
        ("lowercase(event.data.userId)", EVENT, "lowercase() expects a string"),
        ("event.data.items[5]", EVENT, "IndexError"),
        ("event.data.x == 1", None, "no such key 'data'"),
        ("event.data.bad", {"data": {"bad": object()}}, "object"),
    ],
)
def test_evaluate_errors_name_the_expression(source: str, event: Any, fragment: str) -> None:
    with pytest.raises(ExpressionEvalError) as info:
        compile_expression(source).evaluate(event)
    assert isinstance(info.value, ValueError)
    assert repr(source) in str(info.value)
    assert fragment in str(info.value)


# The pruned activation must never change a result: compare with the library on full data.
@pytest.mark.parametrize(
    "source",
    [
        "event.data.plan == 'enterprise'",
        "size(event.data)",
        "size(event)",
        "event",
        "event.data",
        "'plan' in event.data",
        "event['data'].plan",
        "event.data.items.exists(i, i.sku == 'b')",
        "event.data.items.map(i, i.qty)",
        "has(event.data.nested.deep) && has(event.data.nested.nope)",
        "event.data.nested.deep.value + event.data.total",
        "event.data.nested.size() + event.data.nested.deep.size()",
        "[1, 2].map(event, event + 1)",
        "[{'data': 3}].map(event, event.data)",
        "event.data.text.x",
        "event.data.tags.x",
        "event.data.nope.x",
        "event.data.userId == async.data.userId && async.name.startsWith('shop/')",
        "'event.data.plan' + event.data.plan",
        "// event.data.nope\nevent.data.plan",
        "{'a': event.data.plan, 'b': event.data}",
        "event.data.note == null",
    ],
)
def test_pruning_does_not_change_results(source: str) -> None:
    full = cel.compile(source)
    try:
        expected: Any = full.execute({"event": EVENT, "async": ASYNC})
    except Exception as exc:
        expected = type(exc)
    try:
        actual: Any = compile_expression(source).evaluate(EVENT, ASYNC)
    except ExpressionEvalError as exc:
        assert exc.__cause__ is not None
        actual = type(exc.__cause__)
    assert actual == expected


def test_evaluation_cost_does_not_grow_with_unused_event_fields() -> None:
    # Unpruned, the library converts all 2000 fields per call (~1 ms); pruned it is ~10 us.
    # Checked by what the CEL program is given (not by timing it: a busy machine is slow).
    event = with_data(total=150.5, **{f"k{i}": {"v": [i, str(i)]} for i in range(2000)})
    expr = compile_expression("event.data.total > 100")
    program = expr._program
    given: list[dict[str, Any]] = []

    class Recording:
        def execute(self, activation: dict[str, Any]) -> Any:
            given.append(activation)
            return program.execute(activation)

    object.__setattr__(expr, "_program", Recording())
    assert expr.matches(event)
    assert given == [{"event": {"data": {"total": 150.5}}}]


# ---------------------------------------------------------------------------- compilation


def test_compile_is_cached() -> None:
    expr = compile_expression("event.data.cache_probe == 1")
    assert compile_expression("event.data.cache_probe == 1") is expr
    assert compile_expression("event.data.cache_probe == 2") is not expr
    assert isinstance(expr, Expression)
    assert expr.source == "event.data.cache_probe == 1"


def test_expression_source_is_what_the_user_wrote() -> None:
    assert compile_expression("event.data.x === 1").source == "event.data.x === 1"


def test_expression_is_immutable() -> None:
    expr = compile_expression("true")
    with pytest.raises(AttributeError):
        expr.source = "false"
    assert expr.source == "true"


@pytest.mark.parametrize(
    ("source", "position", "excerpt"),
    [
        ("event.data.x ==", "1:16", "| event.data.x ==\n| ...............^"),
        # the rewritten === is one character shorter in CEL; positions stay in user text
        ("event.data.x === ", "1:18", "| event.data.x === \n| .................^"),
        ("event.data.a === 1 && event.data.b !== ", "1:40", "| event.data.a === 1 && "),
        ("event.data.a === 1 &&& true", "1:22", "&&& true\n| " + "." * 21 + "^"),
        ("a ==== b", "1:6", "| a ==== b\n| .....^"),
        ("event.data.x === 1\n  && )", "2:6", "|   && )\n| .....^"),
        ("'日本' === ", "1:10", "| '日本' === \n| .........^"),
        ("'abc", "1:1", "| 'abc\n| ^"),
        ("event.data.?x", "1:11", "unsupported syntax"),
        ("event.data.in == 1", "1:12", "| event.data.in == 1"),
    ],
)
def test_syntax_errors_show_position_in_original_source(
    source: str, position: str, excerpt: str
) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    message = str(info.value)
    assert message.startswith(f"invalid expression {source!r}: syntax error at ")
    assert f"syntax error at {position}:" in message
    assert excerpt in message
    rewritten = source.replace("===", "== ").replace("!==", "!= ")
    if rewritten != source:  # the excerpt shows the user's text, never our rewrite of it
        assert f"| {rewritten.splitlines()[0]}\n" not in message


def test_syntax_error_in_second_line_reports_line_and_column() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression("event.data.x == 1\n&& )")
    assert "syntax error at 2:4:" in str(info.value)
    assert "| && )\n| ...^" in str(info.value)


@pytest.mark.parametrize("source", ["", " ", "\n\t "])
def test_blank_expression_is_rejected(source: str) -> None:
    with pytest.raises(ExpressionError, match="must not be empty"):
        compile_expression(source)


@pytest.mark.parametrize("source", [None, 1, b"true", ["true"], {"a": 1}])
def test_non_string_expression_is_rejected(source: Any) -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(source)


def test_expression_errors_are_value_errors() -> None:
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(ExpressionEvalError, ValueError)


# ---------------------------------------------------------------------------- match shorthand


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.orderId", "event.data.orderId == async.data.orderId"),
        ("  data.user_id2 ", "event.data.user_id2 == async.data.user_id2"),
        ("data._x.y", "event.data._x.y == async.data._x.y"),
        ("name", "event.name == async.name"),
        ("data.in", 'event.data["in"] == async.data["in"]'),
    ],
)
def test_match_expression(path: str, expected: str) -> None:
    assert match_expression(path) == expected
    compile_expression(expected)


def test_match_expression_compares_event_and_async() -> None:
    expr = compile_expression(match_expression("data.orderId"))
    assert expr.matches(EVENT, ASYNC) is True
    assert expr.matches(EVENT, with_data(orderId="other")) is False
    assert expr.matches(EVENT, with_data()) is False
    reserved = compile_expression(match_expression("data.in"))
    assert reserved.matches(EVENT, with_data(**{"in": "reserved"})) is True


@pytest.mark.parametrize("path", ["event.data.orderId", "async.data.orderId"])
def test_match_expression_rejects_variable_prefix(path: str) -> None:
    with pytest.raises(ExpressionError, match=r"relative to the event, write 'data\.orderId'"):
        match_expression(path)


@pytest.mark.parametrize(
    "path", ["", "data.", ".data", "data..x", "data.1x", "data.order-id", "data[0]", "data.x y"]
)
def test_match_expression_rejects_bad_paths(path: str) -> None:
    with pytest.raises(ExpressionError, match="letters, digits and _"):
        match_expression(path)


def test_match_expression_rejects_non_strings() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        match_expression(None)  # type: ignore[arg-type]


# --- plain field paths are read directly (module doc); CEL gives the same value or error ------

_PATH_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["k", "x", "in"]), inner,
                                            max_size=3)),
    max_leaves=8)


def _outcome(expr: Any, event: Any) -> tuple[str, Any]:
    try:
        value = expr.evaluate(event)
    except ExpressionEvalError as exc:
        return "error", str(exc).replace("(event.data.k.x)", "event.data.k.x")
    return type(value).__name__, value


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.none(), st.dictionaries(st.sampled_from(["data", "name"]), _PATH_VALUES,
                                            max_size=2)))
def test_a_plain_path_reads_what_cel_returns(event: Any) -> None:
    direct = compile_expression("event.data.k.x")
    through_cel = compile_expression("(event.data.k.x)")     # not a plain path: CEL alone
    assert direct._path == ("data", "k", "x") and through_cel._path is None
    assert _outcome(direct, event) == _outcome(through_cel, event)
