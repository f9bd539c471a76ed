"""CEL expressions for trigger ``if``, ``wait_for_event``/``cancel_on`` conditions and keys.

Inngest writes these in Google CEL with two map variables, ``event`` and ``async``. The ``cel``
package (a Rust CEL core) already behaves as Inngest needs: ``150 > 100.5`` compares numerically
and ``==`` between different types is false. Ordering different types (``"a" > 5``) is an
evaluation error, which :meth:`Expression.matches` turns into "no match", like Inngest does.

Three things are added here:

* JavaScript's ``===``/``!==``, which users type out of habit, are rewritten to ``== ``/``!= ``.
  The replacement has the same length, so every position the parser reports is also a position
  in the text the user wrote, and error excerpts are rebuilt from that original text.
* ``lowercase(s)`` and ``uppercase(s)``, Inngest's custom functions, as Python callbacks.
* The activation is pruned: the library converts every bound value to CEL on each evaluation,
  which costs about a microsecond per JSON value, so a 100-field event made a one-field
  comparison take ~0.8 ms. We bind only the parts of ``event``/``async`` the source can reach.
* A key that is a plain field path (``event.data.customer_id``, the usual concurrency, throttle
  or idempotency key) is read from the event directly when the value there is a string, a
  boolean, null, a 64-bit integer or a float: what CEL returns for those (~0.3 us instead of
  ~9). Anything else (a missing field, a list, a map, a larger integer) goes to CEL, which gives
  the value or the error it always did.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

import cel

__all__ = [
    "Expression",
    "ExpressionError",
    "ExpressionEvalError",
    "compile_expression",
    "match_expression",
]


class ExpressionError(ValueError):
    """An expression could not be compiled; raised when a function is defined, not per event."""


class ExpressionEvalError(ValueError):
    """Evaluating a compiled expression failed (missing key, wrong operand types, ...)."""


_VARIABLES: Final = ("event", "async")

# Lexer for the two source-level jobs (=== rewriting and finding event/async paths). Strings and
# comments are whole tokens so that neither job looks inside them; raw strings take no escapes.
_TOKEN_RE: Final = re.compile(
    r"""
      (?P<comment>//[^\n]*)
    | (?P<string>
          (?:[bB]?[rR]|[rR][bB])(?:'''.*?'''|\"\"\".*?\"\"\"|'[^'\n]*'|"[^"\n]*")
        | [bB]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                 |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")
        | ['"].*  # unterminated: leave the rest untouched and let the parser report it
      )
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<strict>===|!==)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ERROR_RE: Final = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*?)(?=\nERROR: |\Z)", re.DOTALL)
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CEL_WORDS: Final = frozenset({"in", "null", "true", "false"})  # not allowed after a "."

# A prune plan: the keys to keep, each mapped to the plan for its value; None keeps everything.
_Plan: TypeAlias = dict[str, "_Plan | None"]


def _string_function(name: str, convert: Callable[[str], str]) -> Callable[[object], str]:
    """Inngest's string helpers; non-strings are an error, like a missing cel-go overload."""

    def function(value: object) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{name}() expects a string, got {type(value).__name__}")
        return convert(value)

    return function


_FUNCTIONS: Final = {
    "lowercase": _string_function("lowercase", str.lower),
    "uppercase": _string_function("uppercase", str.upper),
}


class Expression:
    """A compiled expression; immutable and shared through the cache of :func:`compile_expression`.

    It keeps the compiled program together with which variables, which parts of them and which
    custom functions the source uses, so that each evaluation binds nothing else.
    """

    __slots__ = ("_bindings", "_functions", "_path", "_program", "source")

    source: str
    _program: Any
    _bindings: tuple[tuple[str, _Plan | None], ...]
    _functions: dict[str, Callable[[object], str]]
    _path: tuple[str, ...] | None

    def __init__(self, source: str, program: Any, bindings: dict[str, _Plan | None]) -> None:
        used = set(program.functions())
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "_program", program)
        object.__setattr__(self, "_bindings", tuple(bindings.items()))
        object.__setattr__(self, "_functions", {k: f for k, f in _FUNCTIONS.items() if k in used})
        path = _EVENT_PATH_RE.fullmatch(source)
        object.__setattr__(self, "_path", tuple(path.group(1).split(".")[1:]) if path else None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Expression is immutable")

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def _run(self, event: Mapping[str, Any] | None, async_: Mapping[str, Any] | None) -> Any:
        activation: dict[str, Any] = dict(self._functions)
        for name, plan in self._bindings:
            value = event if name == "event" else async_
            if type(value) is not dict:  # None binds {}; other mappings become dicts for CEL
                value = {} if value is None else dict(value)
            activation[name] = _prune(value, plan)
        return self._program.execute(activation)

    def evaluate(
        self, event: Mapping[str, Any] | None, async_: Mapping[str, Any] | None = None
    ) -> Any:
        """Value of the expression with ``event`` and ``async`` bound (``None`` binds ``{}``).

        Used for keys and priorities, where a failure must be reported, not guessed at: raises
        :class:`ExpressionEvalError` naming the expression. The result is plain JSON-like Python.
        """
        if self._path is not None:
            value = _read_path(event, self._path)
            if value is not _MISSING:
                return value
        try:
            return _to_plain(self._run(event, async_))
        except Exception as exc:
            detail = f"no such key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ExpressionEvalError(
                f"cannot evaluate expression {self.source!r}: {type(exc).__name__}: {detail}"
            ) from exc

    def matches(
        self, event: Mapping[str, Any] | None, async_: Mapping[str, Any] | None = None
    ) -> bool:
        """True only if the value is boolean ``True``.

        For trigger ``if``, wait ``if`` and ``cancel_on``: an event lacking a field, or carrying
        it with another type, is simply not a match, exactly as in Inngest.
        """
        try:
            return self._run(event, async_) is True
        except Exception:
            return False


MAX_EXPRESSION_LENGTH = 10_000


def compile_expression(source: str) -> Expression:
    """Compile ``source`` (cached), raising :class:`ExpressionError` with the problem's position.

    Validation happens here, at definition time, so that a typo fails loudly once instead of
    silently matching nothing on every event.
    """
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be a string, got {type(source).__name__}")
    if not source.strip():
        raise ExpressionError("expression must not be empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        # Compiling is superlinear in the length: a 400 KB expression held the event loop for
        # seconds, at every sync of the app that sent it.
        raise ExpressionError(f"expression is {len(source)} characters; at most "
                              f"{MAX_EXPRESSION_LENGTH} are allowed")
    return _compile(source)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    translated, paths = _scan(source)
    try:
        program = cel.compile(translated)
    except ValueError as exc:
        raise ExpressionError(_describe_syntax_error(source, str(exc))) from exc
    bindings: dict[str, _Plan | None] = {}
    for name in _VARIABLES:
        if name in paths:
            bindings[name] = _merge_paths(paths[name])
        elif name in program.variables():  # the lexer missed a use: bind it whole, to be safe
            bindings[name] = None
    return Expression(source, program, bindings)


def _scan(source: str) -> tuple[str, dict[str, list[tuple[str, ...]]]]:
    """Rewrite ``===``/``!==`` in place, and list the field paths read from each variable.

    ``event.data.total`` yields ``("data", "total")``. A path stops at anything other than
    ``.field``, and a trailing ``.f(`` is a method call on the path before it, so the value at
    each listed path is bound whole and every expression sees exactly the data it would see
    unpruned. A bare ``event`` yields ``()``: bind everything.
    """
    out: list[str] = []
    tokens: list[tuple[str, str]] = []
    for m in _TOKEN_RE.finditer(source):
        kind, text = m.lastgroup or "other", m.group()
        if kind == "strict":
            text = text[:2] + " "
        out.append(text)
        if kind not in ("space", "comment"):
            tokens.append((kind, text))
    paths: dict[str, list[tuple[str, ...]]] = {}
    for i, (kind, text) in enumerate(tokens):
        if kind != "ident" or text not in _VARIABLES or (i and tokens[i - 1][1] == "."):
            continue
        chain: list[str] = []
        j = i + 1
        while j + 1 < len(tokens) and tokens[j][1] == "." and tokens[j + 1][0] == "ident":
            chain.append(tokens[j + 1][1])
            j += 2
        if chain and j < len(tokens) and tokens[j][1] == "(":
            chain.pop()
        paths.setdefault(text, []).append(tuple(chain))
    return "".join(out), paths


def _merge_paths(paths: list[tuple[str, ...]]) -> _Plan | None:
    """Merge field paths into one prune plan; a path that is a prefix of another wins."""
    plan: _Plan = {}
    for path in sorted(paths, key=len):
        if not path:
            return None
        node: _Plan | None = plan
        for key in path[:-1]:
            if node is None:
                break
            node = node.setdefault(key, {})
        if node is not None:
            node.setdefault(path[-1], None)
    return plan


def _prune(value: Any, plan: _Plan | None) -> Any:
    """Copy of ``value`` restricted to ``plan``; non-dicts are kept as they are (CEL errors on
    them just as it would unpruned), absent keys stay absent."""
    if plan is None or not isinstance(value, dict):
        return value
    return {key: _prune(value[key], sub) for key, sub in plan.items() if key in value}


def _describe_syntax_error(source: str, message: str) -> str:
    """Rebuild the library's report against the original source (same positions, see ``_scan``),
    so the excerpt shows what the user typed rather than our ``== `` rewrite."""
    lines = source.split("\n")
    parts = []
    for line_no, col_no, detail in _ERROR_RE.findall(message):
        line, col = int(line_no), int(col_no)
        first = detail.split("\n", 1)[0].removeprefix("Syntax error: ")
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        parts.append(f"syntax error at {line}:{col}: {first}\n| {text}\n| {'.' * (col - 1)}^")
    body = "\n".join(parts) if parts else message
    return f"invalid expression {source!r}: {body}"


_PLAIN: Final = frozenset({bool, int, float, str, type(None)})
_EVENT_PATH_RE: Final = re.compile(r"\s*event((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*")
_MISSING: Final = object()
_SCALARS: Final = _PLAIN - {int}       # ints only within CEL's 64 bits (`_read_path`)


def _read_path(event: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    """The value at `path` in `event` when CEL would return it unchanged (module doc), else
    `_MISSING` (CEL then evaluates it: the value, or the error naming what is missing)."""
    value: Any = event
    for key in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
        if value is _MISSING:
            return _MISSING
    kind = type(value)
    if kind in _SCALARS or (kind is int and -(2**63) <= value < 2**63):
        return value
    return _MISSING


def _to_plain(value: Any) -> Any:
    """JSON-like Python for what CEL returns, so results can be stored and compared as keys.

    Values without a JSON form are rendered the way CEL's ``string()`` would render them.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list:
        return [_to_plain(item) for item in value]
    if kind is dict:  # CEL maps come back in a different order on each run: sort for stable keys
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, kv[0]))
        return {_to_plain(k): _to_plain(v) for k, v in items}
    if isinstance(value, cel.OptionalValue):
        return _to_plain(value.value()) if value.has_value() else None
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, datetime.timedelta):
        micros = value // datetime.timedelta(microseconds=1)
        seconds, frac = divmod(abs(micros), 1_000_000)
        sign = "-" if micros < 0 else ""
        return f"{sign}{seconds}.{frac:06d}".rstrip("0").rstrip(".") + "s"
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"unsupported result type {kind.__name__}")


def match_expression(path: str) -> str:
    """Expand Inngest's ``match`` shorthand: ``"data.orderId"`` compares that field of the
    triggering event with the same field of the incoming one."""
    if not isinstance(path, str):
        raise ExpressionError(f"match must be a string, got {type(path).__name__}")
    path = path.strip()
    segments = path.split(".")
    if segments[0] in _VARIABLES and len(segments) > 1:
        rest = ".".join(segments[1:])
        raise ExpressionError(
            f"invalid match {path!r}: the path is relative to the event, write {rest!r}"
        )
    if not all(_IDENT_RE.fullmatch(s) for s in segments):
        raise ExpressionError(
            f"invalid match {path!r}: expected a dotted path of field names made of letters, "
            f"digits and _ (not starting with a digit), e.g. 'data.orderId'"
        )
    fields = "".join(f'["{s}"]' if s in _CEL_WORDS else f".{s}" for s in segments)
    return f"event{fields} == async{fields}"



EVENT_FIELDS: Final = frozenset({"id", "name", "data", "user", "ts", "v"})


def compile_event_query(source: str) -> Expression:
    """Compile a condition on one event where its fields may also be named bare.

    The runs search documents ``data.userId == 42`` (the event is implied) and the trigger form
    ``event.data.userId == 42``; both mean the same. A bare top-level ``id``, ``name``, ``data``,
    ``user``, ``ts`` or ``v`` (not after a ``.``, not called as a function) becomes
    ``event.<field>``; strings and comments are left alone (they are whole tokens). The source is
    compiled as written first, so syntax errors point at what the user typed.
    """
    compile_expression(source)  # validation and error positions against the user's text
    tokens = [(m.lastgroup or "other", m.group()) for m in _TOKEN_RE.finditer(source)]
    solid = [i for i, (kind, _) in enumerate(tokens) if kind not in ("space", "comment")]
    out = [text for _, text in tokens]
    for n, i in enumerate(solid):
        kind, text = tokens[i]
        if kind != "ident" or text not in EVENT_FIELDS:
            continue
        before = tokens[solid[n - 1]][1] if n else ""
        after = tokens[solid[n + 1]][1] if n + 1 < len(solid) else ""
        if before != "." and after != "(":
            out[i] = f"event.{text}"
    return compile_expression("".join(out))
