"""RFC 8785 canonical JSON (JCS), fast for what SDK requests usually hold.

Every request to an official-SDK app is signed over its canonical form, so it is built for
every call, with every event and step output of the run in it. `rfc8785.dumps` writes each
value from Python code, which made it a tenth of the server's CPU on the SDK path. The
standard library's C encoder writes the same bytes for most JSON, so it is used whenever one
walk over the value shows that nothing in it is written differently:

- strings: both escape `"`, `\\`, and the control characters U+0000-U+001F the same way
  (short escapes, else `\\u00xx` in lower case) and write everything else as UTF-8;
- object keys: JCS sorts them by UTF-16 code units, `sort_keys` by code points; the two
  orders agree unless a key holds a character at or above U+D800 (a surrogate pair sorts
  below U+E000-U+FFFF in UTF-16);
- integers within ±(2^53 - 1), which JCS requires (beyond, `rfc8785` raises);
- floats that are not whole and whose magnitude is in [1e-4, 1e16): ECMAScript and Python
  then both print the shortest digits that round-trip, without an exponent (whole floats
  print as `1` in JCS but `1.0` in Python; exponents start at different magnitudes).

Anything else (such floats, large integers, other types, a key past U+D7FF) goes to
`rfc8785`, which writes or rejects it. `tests/core/test_canonical.py` checks byte equality
against `rfc8785` over generated values.
"""

from __future__ import annotations

import json
from typing import Any, Final

import rfc8785

from stepwell.core.jsontext import encode_with

_MAX_INT: Final = 2**53 - 1
_MAX_DEPTH: Final = 500
_ENCODE: Final = encode_with(json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                              sort_keys=True, separators=(",", ":"),
                                              check_circular=False))


def _plain(value: Any) -> bool:
    """Whether the standard encoder writes `value` exactly as JCS does (module doc). A loop
    over a stack, not recursion: the walk is on the hot path, and strings (most values) are
    passed over without a push. Nesting deeper than `_MAX_DEPTH` (a cycle, or a hostile
    value) is left to `rfc8785`, which refuses it as it always did."""
    stack = [(value, 0)]
    push, pop = stack.append, stack.pop
    while stack:
        item, depth = pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is dict or kind is list or kind is tuple:
            if depth >= _MAX_DEPTH:
                return False
            if kind is dict:
                for key, inner in item.items():
                    if type(key) is not str or (not key.isascii() and max(key) >= "\ud800"):
                        return False
                    if type(inner) is not str:
                        push((inner, depth + 1))
            else:
                for inner in item:
                    if type(inner) is not str:
                        push((inner, depth + 1))
        elif kind is int:
            if not -_MAX_INT <= item <= _MAX_INT:
                return False
        elif kind is float:
            if not (1e-4 <= abs(item) < 1e16 and not item.is_integer()):
                return False
        else:
            return False
    return True


def canonical_json(value: Any) -> bytes:
    """`value` as RFC 8785 canonical JSON bytes; ValueError when JCS cannot represent it (an
    integer beyond ±(2^53 - 1), NaN, a lone surrogate, a type JSON does not have)."""
    if _plain(value):
        # A lone surrogate passes the walk; UTF-8 refuses it (UnicodeEncodeError, a
        # ValueError), as rfc8785 does.
        return _ENCODE(value).encode("utf-8")
    return rfc8785.dumps(value)
