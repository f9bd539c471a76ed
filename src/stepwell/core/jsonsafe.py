"""JSON numbers the official SDKs can read back exactly.

JSON itself has no integer limit, but every party an SDK function's data passes through reads
numbers as IEEE-754 doubles: JavaScript's `JSON.parse` rounds an integer beyond 2^53 - 1, and
the Python SDK checks request signatures over the RFC 8785 form of the body, which writes such
an integer as the nearest double. So an event holding one cannot reach an SDK function
unchanged; the event API refuses it, naming where it is (send it as a string instead).
"""

from __future__ import annotations

from typing import Any

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
