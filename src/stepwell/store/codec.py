"""Values as every backend keeps them in its text columns: compact JSON.

One encoding for both backends, so a value reads back the same whichever wrote it.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
