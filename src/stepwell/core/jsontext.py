"""JSON text from an encoder built once.

`json.JSONEncoder.encode` builds its C encoder again on every call (`iterencode` makes a new
`c_make_encoder` with a new circular-reference table each time), which is most of the cost of
encoding the small values stepwell writes on its hot paths: a step's result, an event's data,
a match key, a fingerprint. `encode_with(encoder)` builds that C encoder once, from the same
settings, and returns a function writing the same text as `encoder.encode`.

The C encoder is built without a circular-reference table: one table shared by every call
(and by the event loop and the writer threads at once) could be left holding entries after
an error and then refuse a value that is not circular. A value that is circular (or deeper
than the interpreter's recursion limit) makes it raise RecursionError; that value is then
given to `encoder.encode` itself, which raises exactly what it always did (ValueError
"Circular reference detected", or RecursionError). `tests/core/test_jsontext.py` checks the
text is the same.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)


def encode_with(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """A function writing `encoder.encode(value)`, faster (module doc). Falls back to
    `encoder.encode` itself where the C encoder is missing (other interpreters) or cannot
    apply (an `indent`)."""
    if _make_encoder is None or encoder.indent is not None:
        return encoder.encode
    write_str: Callable[[str], str] = (json.encoder.encode_basestring_ascii
                                       if encoder.ensure_ascii
                                       else json.encoder.encode_basestring)
    fast = _make_encoder(None, encoder.default, write_str, None, encoder.key_separator,
                         encoder.item_separator, encoder.sort_keys, encoder.skipkeys,
                         encoder.allow_nan)
    slow = encoder.encode

    def encode(value: Any) -> str:
        if type(value) is str:
            return write_str(value)
        try:
            return "".join(fast(value, 0))
        except RecursionError:
            return slow(value)

    return encode
