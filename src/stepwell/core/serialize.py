"""Turning step results and run outputs into JSON values."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from stepwell.core.jsontext import encode_with


class NotSerializableError(TypeError):
    """A value that cannot be stored as JSON; the message names where it came from and its type."""


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)          # Pydantic v2 models
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(type(value).__name__)


# `json.dumps(value, default=_default, separators=(",", ":"), allow_nan=False)`, with the
# encoder built once (core/jsontext.py): every step result and run output is written here.
_ENCODE = encode_with(json.JSONEncoder(default=_default, separators=(",", ":"),
                                       allow_nan=False))


def to_json_text(value: Any, *, what: str) -> str:
    """JSON text for `value`, or NotSerializableError naming `what` and the offending type."""
    try:
        return _ENCODE(value)
    except (TypeError, ValueError) as exc:
        raise NotSerializableError(
            f"{what} returned a value that is not JSON-serialisable ({exc}); return JSON "
            "types (dict, list, str, int, float, bool, None), a dataclass or a Pydantic model"
        ) from None


def to_json_value(value: Any, *, what: str) -> Any:
    """The value as it will read back from storage (tuples become lists, models become dicts)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    return json.loads(to_json_text(value, what=what))
