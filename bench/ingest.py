"""What the ingest checks cost: parsing an event API body with `jsonsafe` against plain
`json.loads`, and `validate_event_payload` per event (it now walks the event and measures its
size). JSON on stdout.

    .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from stepwell.core import jsonsafe
from stepwell.core.models import MAX_EVENT_BYTES, MAX_EVENTS_PER_SEND, validate_event_payload


def per_second(fn: Callable[[], Any], seconds: float = 1.0) -> float:
    """Calls of `fn` per second, over at least `seconds` of wall time."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def main() -> None:
    small = {"name": "shop/order.created", "data": {"order": 123, "items": [
        {"sku": f"sku-{i}", "qty": i, "price": 9.99} for i in range(5)], "user": "u-1"}}
    big = {"name": "shop/big", "data": {"rows": [{"i": i, "s": "x" * 40, "f": i / 3}
                                                 for i in range(15_000)]}}
    small_text, big_text = json.dumps(small), json.dumps(big)
    batch_text = json.dumps([small] * 100)
    out: dict[str, Any] = {"big_event_bytes": len(big_text)}
    for label, text in (("small", small_text), ("big", big_text), ("batch100", batch_text)):
        plain = per_second(lambda text=text: json.loads(text))
        checked = per_second(lambda text=text: jsonsafe.parse_items(
            text, max_item_bytes=MAX_EVENT_BYTES, max_items=MAX_EVENTS_PER_SEND))
        out[f"parse_{label}_per_s"] = {"json.loads": round(plain), "jsonsafe": round(checked),
                                       "ratio": round(checked / plain, 2)}
    out["validate_small_per_s"] = round(per_second(lambda: validate_event_payload(small)))
    out["validate_big_per_s"] = round(per_second(lambda: validate_event_payload(big)))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
