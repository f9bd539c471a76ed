"""CPU per canonical JSON encoding of an SDK request body: `rfc8785.dumps` vs stepwell's
`canonical_json` (core/canonical.py), which uses the standard library's C encoder when that
writes the same bytes.

    .venv/bin/python bench/canonical_json.py [--steps 3] [--calls 5000]

The body is what `RemoteExecutor` sends for a run of `--steps` completed steps (event, events,
steps, ctx), with small step outputs. Process CPU time per call, best of 3 rounds each.
Not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import rfc8785

from stepwell.core.canonical import canonical_json


def body(steps: int) -> dict[str, Any]:
    event = {"name": "bench/steps", "id": "01M8Z9BK68CTBGXR3NTKVWQDDK", "ts": 1764810000000,
             "user": {}, "data": {"i": 17, "user": "u-1", "order": {
                 "id": "o-9", "items": [{"sku": "a", "qty": 2, "price": 12.5}]}}}
    hashes = [f"{n:040x}" for n in range(steps)]
    return {"event": event, "events": [event],
            "steps": {h: {"data": {"n": n, "ok": True}} for n, h in enumerate(hashes)},
            "ctx": {"run_id": event["id"], "attempt": 0, "disable_immediate_execution": False,
                    "use_api": False, "stack": {"stack": hashes, "current": steps}, "env": "",
                    "step_id": "step", "fn_id": "4b3c2c3e-7c1e-5c4e-9d5e-2f3a4b5c6d7e",
                    "qi_id": "eyJpIjoxfQ"},
            "version": 2, "use_api": False}


def cpu_us(encode: Callable[[Any], bytes], value: Any, calls: int) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.process_time()
        for _ in range(calls):
            encode(value)
        best = min(best, (time.process_time() - began) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    value = body(args.steps)
    assert canonical_json(value) == rfc8785.dumps(value)
    size = len(canonical_json(value))
    slow, fast = cpu_us(rfc8785.dumps, value, args.calls), cpu_us(canonical_json, value,
                                                                  args.calls)
    print(f"{args.steps} steps, {size} bytes: rfc8785.dumps {slow:.1f} us, canonical_json "
          f"{fast:.1f} us CPU per call ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
