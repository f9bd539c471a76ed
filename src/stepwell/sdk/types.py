"""Step results and event data as the types the code declares (Pydantic models, dataclasses).

Steps store JSON. What a handler gets back is rebuilt from that JSON with Pydantic, from the
type the code names: `output_type=` or the step callable's return annotation, and for events the
model an `Event[Model]` declaration names. The same rebuild runs on the first execution and on
every replay (both start from the stored JSON), so a handler sees one type either way.

Only annotations that name a model or a dataclass (anywhere inside, e.g. `list[Item]`) are
rebuilt; plain JSON annotations (`dict[str, int]`, `str`) return the stored value unchanged.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Any

import pydantic

from stepwell.sdk.errors import NonRetriableError


class DataMismatchError(NonRetriableError):
    """Stored or received data that does not fit its declared type; the message names the
    field. Retrying cannot change the data, so it is not retried."""


def _structured(tp: Any) -> bool:
    """Whether `tp` is or contains a Pydantic model or a dataclass."""
    if isinstance(tp, type) and (issubclass(tp, pydantic.BaseModel)
                                 or dataclasses.is_dataclass(tp)):
        return True
    return any(_structured(arg) for arg in typing.get_args(tp))


_RETURN_TYPES: dict[Any, Any | None] = {}


def return_type(fn: Any) -> Any | None:
    """The type to rebuild `fn`'s result as, or None (keep the JSON). Resolving annotations
    costs more than a step's own bookkeeping, so it is done once per function, keyed by its
    code object (shared by every closure made from one `def` or `lambda`, and holding none of
    their captured values)."""
    target = getattr(fn, "__func__", fn)          # a bound method: its function's annotation
    key = getattr(target, "__code__", None)
    if key is None:                               # a callable object or a builtin
        return _resolve(target)
    try:
        return _RETURN_TYPES[key]
    except KeyError:
        pass
    if len(_RETURN_TYPES) >= 4096:
        _RETURN_TYPES.clear()
    found = _RETURN_TYPES[key] = _resolve(target)
    return found


def _resolve(fn: Any) -> Any | None:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:           # unresolvable string annotations (local classes): keep JSON
        return None
    tp = hints.get("return")
    return tp if tp is not None and _structured(tp) else None


@lru_cache(maxsize=512)
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(tp)


def _describe(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(the value)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def rebuild(tp: Any, value: Any, *, what: str) -> Any:
    """`value` (JSON) as `tp`, or DataMismatchError naming `what` and the fields."""
    try:
        return _adapter(tp).validate_python(value)
    except pydantic.ValidationError as exc:
        name = getattr(tp, "__name__", repr(tp))
        raise DataMismatchError(f"{what} does not match {name}: {_describe(exc)}") from None


def to_plain(value: Any) -> Any:
    """A model or dataclass given as event data, as JSON-ready values."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _adapter(type(value)).dump_python(value, mode="json")
    return value

