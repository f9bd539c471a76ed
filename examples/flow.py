"""Flow control, as the guide configures it: rate limit + throttle, debounce, priority.

The options are written exactly as the guide writes them (plain dicts; `===` copied from
TypeScript is accepted). Two corrections the guide needs, which stepwell applies:
`throttle` delays runs beyond its rate and never drops them (`rate_limit` is the one that
skips), and a priority of 100 means "start as if queued 100 seconds earlier".
"""

from __future__ import annotations

from typing import Any

import stepwell

app = stepwell.App("flow")
SYNCED: list[dict[str, Any]] = []     # what the CRM received, in order
INDEXED: list[dict[str, Any]] = []    # what the search index received
REPORTS: list[str] = []               # reports in the order they were generated


@app.function(
    id="sync-crm",
    trigger="crm/contact.updated",
    # Max 10 requests per minute per user
    rate_limit={"limit": 10, "period": "1m", "key": "event.data.userId"},
    # At most 5 run starts per second; the rest wait their turn (never dropped)
    throttle={"limit": 5, "period": "1s"},
)
async def sync_crm(ctx: stepwell.Context, step: stepwell.Step) -> None:
    await step.run("push-to-crm", lambda: SYNCED.append(dict(ctx.event.data)))


@app.function(
    id="index-product",
    trigger="shop/product.updated",
    # Wait 10s for more events; only run with the latest data
    debounce={"period": "10s", "key": "event.data.productId"},
)
async def index_product(ctx: stepwell.Context, step: stepwell.Step) -> None:
    await step.run("index", lambda: INDEXED.append(dict(ctx.event.data)))


@app.function(
    id="generate-report",
    trigger="reports/report.requested",
    # High number = high priority: enterprise requests jump ahead of those queued in the last
    # 100 s. Priority only reorders a backlog, so one report at a time makes one form.
    priority={"run": "event.data.plan === 'enterprise' ? 100 : 0"},
    concurrency=1,
)
async def generate_report(ctx: stepwell.Context, step: stepwell.Step) -> None:
    await step.run("render", lambda: REPORTS.append(ctx.event.data["customer"]))
    await step.sleep("cool-down", "30s")
