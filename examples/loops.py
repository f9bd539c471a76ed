"""Steps in loops: the seed's "Working with Loops" pattern, and its repeated-id variant.

- `process-items` gives each iteration its own id, `f"process-item-{item['id']}"` (the seed's
  way): ids stay stable even if the list is reordered between replays.
- `pack-boxes` reuses one id, "pack-box", on every iteration: stepwell (like the Inngest SDKs)
  tells the repeats apart by their order, so this works too as long as the list does not change
  while the run is in flight.

Each item is its own step: a failure on item 3 retries item 3 only; items 1 and 2 are memoized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stepwell

app = stepwell.App("warehouse")


# --- a fake warehouse ------------------------------------------------------------------------


@dataclass
class Warehouse:
    processed: list[str] = field(default_factory=list)
    packed: list[list[str]] = field(default_factory=list)

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        self.processed.append(item["id"])
        return {"id": item["id"], "total": item["qty"] * item["price"]}

    def pack_box(self, box: list[str]) -> dict[str, Any]:
        self.packed.append(box)
        return {"box": len(self.packed), "items": len(box)}


warehouse = Warehouse()


# --- the functions -----------------------------------------------------------------------------


@app.function(id="process-items", trigger="warehouse/items.received")
async def process_items(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    items: list[dict[str, Any]] = ctx.event.data["items"]
    totals = []
    for item in items:
        # A dynamic id makes each iteration a distinct, stable step.
        result = await step.run(f"process-item-{item['id']}", warehouse.process_item, item)
        totals.append(result["total"])
    return {"items": len(items), "total": sum(totals)}


@app.function(id="pack-boxes", trigger="warehouse/order.picked")
async def pack_boxes(ctx: stepwell.Context, step: stepwell.Step) -> list[dict[str, Any]]:
    boxes: list[list[str]] = ctx.event.data["boxes"]
    packed = []
    for box in boxes:
        # The same id every time: the engine makes each occurrence unique.
        packed.append(await step.run("pack-box", warehouse.pack_box, box))
    return packed
