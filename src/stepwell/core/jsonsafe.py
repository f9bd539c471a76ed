"""JSON that every layer can store and show again: the one check for values entering stepwell.

Python's `json` accepts things that break later, far from where they came in: `1e400` parses to
`inf` and `NaN`/`Infinity` literals to non-finite floats (which strict JSON cannot write back, so
every listing that includes them fails); `"\\ud800"` parses to a lone surrogate (which cannot be
encoded as UTF-8, so the same); `"\\u0000"` parses to NUL (which Postgres refuses in text, so
ingest fails on one backend only); a few kilobytes of `[[[[...` nest deep enough to exhaust the
interpreter's recursion. `parse` and `check` refuse all of these at the door with an
`UnsafeJSON` naming the field path (`data.items[3].name`), so a transport can answer 400 and
nothing unsafe is ever stored. `repair` is the defence in depth for what an older version may
already have stored: it makes a value showable and says what it changed.

It also finds integers the official SDKs cannot read back exactly (`unsafe_integer`): every
party an SDK function's data passes through reads numbers as IEEE-754 doubles (JavaScript's
`JSON.parse` rounds an integer beyond 2^53 - 1, and the Python SDK checks request signatures
over the RFC 8785 form of the body, which writes such an integer as the nearest double), so
the event API refuses an event holding one, naming where it is (send it as a string instead).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from stepwell.core.jsontext import encode_with

# The deepest nesting of arrays and objects accepted anywhere JSON enters (a document's root
# is depth 1). Real event payloads and step results are a few levels deep; 128 leaves room
# for generated data and stays far below what serializing and expression evaluation recurse
# through safely.
MAX_JSON_DEPTH: Final = 128

_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class UnsafeJSON(ValueError):
    """A value that stepwell will not store; `path` names where it is (`""` for the root)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def join(path: str, key: str | int) -> str:
    """`path` extended by an object key or array index, as a person would write it in JS."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=True)}]"


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains the NUL character (\\u0000), which cannot be stored"
    if not text.isascii() and _SURROGATE.search(text):
        return ("contains a lone UTF-16 surrogate (such as \\ud800), which is not valid "
                "Unicode text")
    return None


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any, int]]:
    """Every value in the tree with its path and depth, without recursion (a deep document
    must not exhaust the interpreter's stack here either)."""
    stack: list[tuple[str, Any, int]] = [(path, value, 1)]
    while stack:
        where, item, depth = stack.pop()
        yield where, item, depth
        if isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                stack.append((join(where, key) if isinstance(key, str) else where, child,
                              depth + 1))
        elif isinstance(item, list | tuple):
            for index in range(len(item) - 1, -1, -1):
                stack.append((join(where, index), item[index], depth + 1))


def check(value: Any, path: str = "", *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise `UnsafeJSON` for the first value (in document order) that stepwell would not
    store: a non-finite number, a string or key with NUL or a lone surrogate, a key that is
    not a string, a value that is not JSON, or nesting deeper than `max_depth`."""
    for where, item, depth in _walk(value, path):
        if isinstance(item, dict | list | tuple) and depth > max_depth:
            raise UnsafeJSON(where, f"is nested deeper than {max_depth} levels, the most "
                                    "that is accepted")
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                raise UnsafeJSON(where, problem)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON(where, f"is {item!r}: only finite numbers are accepted "
                                        "(1e400 and NaN/Infinity are not JSON numbers)")
        elif isinstance(item, dict):
            for key in item:
                if not isinstance(key, str):
                    raise UnsafeJSON(where, f"has a key {key!r} that is not a string")
                problem = _string_problem(key)
                if problem:
                    raise UnsafeJSON(join(where, key), f"is a key that {problem}")
        elif item is not None and not isinstance(item, bool | int | list | tuple):
            raise UnsafeJSON(where, f"is a {type(item).__name__}, not a JSON value")


# A \u escape of NUL or of a surrogate (lone or paired: the exact check tells them apart) is
# the only way JSON text that parsed can hold either; text without one needs no walk for them.
# Non-finite numbers are caught by the parser's hooks. Together they keep the common case near
# the speed of `json.loads`.
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_INFINITY = float("inf")


class _Hooks:
    """`parse_constant` and `parse_float` hooks that remember a non-finite number (NaN and
    Infinity literals, and floats such as 1e400 that overflow); the values are kept, so that
    `check` reports them with their path."""

    def __init__(self) -> None:
        self.seen = False

    def constant(self, name: str) -> float:
        self.seen = True
        return float(name)

    def number(self, text: str) -> float:
        value = float(text)
        if value == _INFINITY or value == -_INFINITY:
            self.seen = True
        return value

    def decoder(self) -> json.JSONDecoder:
        return json.JSONDecoder(parse_constant=self.constant, parse_float=self.number)


def _brackets(text: str, start: int = 0, end: int | None = None) -> int:
    """An upper bound of the nesting depth of JSON text: its count of opening brackets."""
    stop = len(text) if end is None else end
    return text.count("[", start, stop) + text.count("{", start, stop)


_CONTAINERS = (dict, list, tuple)


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether `value` nests deeper than `max_depth`: a walk over containers only, one level
    at a time (no recursion, and a list comprehension per container keeps it fast)."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > max_depth:
            return True
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below.extend([c for c in children if type(c) in _CONTAINERS])
        level = below
        depth += 1
    return False


def _checked_text(text: str, value: Any, path: str, max_depth: int, start: int = 0,
                  end: int | None = None, constants: bool = False) -> None:
    """`check` `value` (parsed from `text[start:end]`) only if the text gives a reason to."""
    suspicious = constants or _ESCAPES.search(text, start, len(text) if end is None else end)
    if suspicious or (_brackets(text, start, end) > max_depth
                      and isinstance(value, dict | list) and _too_deep(value, max_depth)):
        check(value, path, max_depth=max_depth)


def parse(text: str, path: str = "", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text and `check` it. Raises `UnsafeJSON` (a `ValueError`) for what `check`
    refuses and `json.JSONDecodeError` (also a `ValueError`) for text that is not JSON."""
    hooks = _Hooks()
    try:
        value = hooks.decoder().decode(text)
    except RecursionError:
        raise UnsafeJSON(path, f"is nested deeper than {max_depth} levels, the most that is "
                               "accepted") from None
    _checked_text(text, value, path, max_depth, constants=hooks.seen)
    return value


# What `json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))` uses,
# built once: that call makes a new encoder each time, a noticeable share of ingesting an event.
_COMPACT = encode_with(json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                        separators=(",", ":")))


def dumps_checked(value: Any, path: str = "", *, max_depth: int = MAX_JSON_DEPTH) -> bytes:
    """`value` as compact UTF-8 JSON, or `UnsafeJSON` naming the first value `check` refuses
    (a Python value: also sets, objects, non-string keys). The JSON encoder itself finds
    non-finite numbers, non-JSON types and lone surrogates at C speed; only then, or when the
    text shows NUL or enough brackets to be deep, is the value walked."""
    try:
        text = _COMPACT(value)
        data = text.encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        check(value, path, max_depth=max_depth)
        raise UnsafeJSON(path, "is not a JSON value") from None
    if "\\u0000" in text or (_brackets(text) > max_depth and _too_deep(value, max_depth)):
        check(value, path, max_depth=max_depth)
    return data


def repair(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of `value` that strict JSON can write (non-finite numbers become null, lone
    surrogates U+FFFD, non-string keys strings, other objects their repr), and what was
    changed, one `path: what` a change. Values already fine come back as they are, so this
    costs one walk for the common case."""
    problems: list[str] = []

    def fix(item: Any, where: str, depth: int) -> Any:
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                problems.append(f"{where or '(root)'}: lone surrogates replaced by U+FFFD")
                return _SURROGATE.sub("\ufffd", item)
            return item
        if isinstance(item, float) and not math.isfinite(item):
            problems.append(f"{where or '(root)'}: {item!r} replaced by null")
            return None
        if item is None or isinstance(item, bool | int | float):
            return item
        if depth > MAX_JSON_DEPTH:
            problems.append(f"{where or '(root)'}: nested too deeply, replaced by null")
            return None
        if isinstance(item, dict):
            out = {}
            for key, child in item.items():
                name = key if isinstance(key, str) else str(key)
                if _SURROGATE.search(name):
                    problems.append(f"{where or '(root)'}: a key's lone surrogates replaced")
                    name = _SURROGATE.sub("\ufffd", name)
                out[name] = fix(child, join(where, name), depth + 1)
            return out
        if isinstance(item, list | tuple):
            return [fix(child, join(where, i), depth + 1) for i, child in enumerate(item)]
        problems.append(f"{where or '(root)'}: a {type(item).__name__} shown as text")
        return repr(item)

    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError):
        return fix(value, path, 1), problems
    return value, problems


class ItemTooLarge(ValueError):
    """One item of `parse_items` is over its byte limit."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(f"[{index}] is {size} bytes; at most {limit} bytes are accepted per "
                         "item")
        self.index = index
        self.size = size
        self.limit = limit


@dataclass(slots=True)
class Items:
    """What `parse_items` read: the items before the first problem, whether the document was
    an array, and that problem (None when the whole document was read)."""

    items: list[Any]
    is_array: bool
    error: ValueError | None = None


_WHITESPACE = " \t\n\r"


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def _byte_size(text: str, start: int, end: int, limit: int) -> int:
    # A character is 1 to 4 UTF-8 bytes, so only a long slice needs encoding to measure.
    if (end - start) * 4 <= limit:
        return end - start
    return len(text[start:end].encode("utf-8"))


def parse_items(text: str, *, max_item_bytes: int, max_items: int,
                max_depth: int = MAX_JSON_DEPTH) -> Items:
    """Parse a JSON value, or an array of values one item at a time, each `check`ed and held
    to `max_item_bytes` (its UTF-8 text as sent). A problem stops the reading: the items
    before it are returned with it, so a caller can keep them (Inngest's event API stores
    the events before an invalid one). Paths in errors start at the item (`[3].data.x`)."""
    at = _skip(text, 0)
    if not text.startswith("[", at):
        size = _byte_size(text, 0, len(text), max_item_bytes)
        if size > max_item_bytes:
            return Items([], False, ItemTooLarge(0, size, max_item_bytes))
        try:
            return Items([parse(text, max_depth=max_depth)], False)
        except ValueError as exc:
            return Items([], False, exc)
    items: list[Any] = []
    hooks = _Hooks()
    decoder = hooks.decoder()
    at = _skip(text, at + 1)
    if text.startswith("]", at):
        return _end(text, at + 1, Items(items, True))
    while True:
        index = len(items)
        if index >= max_items:
            return Items(items, True, ValueError(
                f"more than {max_items} items; at most {max_items} are accepted in one request"))
        hooks.seen = False
        try:
            value, end = decoder.raw_decode(text, at)
        except RecursionError:
            return Items(items, True, UnsafeJSON(f"[{index}]", f"is nested deeper than "
                                                 f"{max_depth} levels, the most that is "
                                                 "accepted"))
        except ValueError as exc:
            return Items(items, True, exc)
        size = _byte_size(text, at, end, max_item_bytes)
        if size > max_item_bytes:
            return Items(items, True, ItemTooLarge(index, size, max_item_bytes))
        try:
            _checked_text(text, value, f"[{index}]", max_depth, at, end, hooks.seen)
        except UnsafeJSON as exc:
            return Items(items, True, exc)
        items.append(value)
        at = _skip(text, end)
        if text.startswith("]", at):
            return _end(text, at + 1, Items(items, True))
        if not text.startswith(",", at):
            return Items(items, True, ValueError(
                f"expected ',' or ']' after item [{index}] at character {at}"))
        at = _skip(text, at + 1)


def _end(text: str, at: int, items: Items) -> Items:
    if _skip(text, at) != len(text):
        items.error = ValueError(f"extra data after the array at character {at}")
    return items


# --- integers beyond what a double holds exactly ---------------------------------------------

MAX_SAFE_INTEGER = 2**53 - 1


def unsafe_integer(value: Any, path: str = "") -> str | None:
    """The path (`data.amount`, `data.items[2]`) of the first integer outside
    ±(2^53 - 1) in a JSON value, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return path if abs(value) > MAX_SAFE_INTEGER else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unsafe_integer(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unsafe_integer(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def unsafe_integer_message(where: str, value_path: str) -> str:
    return (f"{where} holds an integer at '{value_path}' beyond ±(2^53 - 1) "
            f"(±{MAX_SAFE_INTEGER}): the Inngest SDKs read JSON numbers as doubles and "
            "cannot receive it exactly; send it as a string")
