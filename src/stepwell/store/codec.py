"""Values as every backend keeps them in its text columns: compact JSON.

One encoding for both backends, so a value reads back the same whichever wrote it.
"""

from __future__ import annotations

import json
from typing import Any

# Built once: `json.dumps` with any non-default argument builds a new encoder per call, which
# was a third of the cost of encoding a step's small result.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def dumps(value: Any) -> str:
    return _ENCODE(value)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
