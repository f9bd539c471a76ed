"""Values as every backend keeps them in its text columns: compact JSON.

One encoding for both backends, so a value reads back the same whichever wrote it.
"""

from __future__ import annotations

import json
from typing import Any

from stepwell.core.jsontext import encode_with

# Built once: `json.dumps` with any non-default argument builds a new encoder per call, and
# even a kept encoder's `encode` builds its C encoder per call (core/jsontext.py).
_ENCODE = encode_with(json.JSONEncoder(separators=(",", ":")))


def dumps(value: Any) -> str:
    return _ENCODE(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
