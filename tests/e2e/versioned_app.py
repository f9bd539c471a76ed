"""The app and worker process of the versioned-workers test; not a test module.

    SHOP_VERSION=v2 python versioned_app.py DB_URL

runs a worker of `make_app("v2")` (explicit `App(version=...)`: a versioned worker) until
SIGTERM, printing "ready" once started. Each function records which version started a run and
which version finished it, so the test sees where each run went.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import stepwell

LEASE_S = 1.5            # short, so a killed worker's leases and registry rows go quickly
COOL_OFF = "3s"          # the sleep after "go": the window in which the test kills a worker


def make_app(version: str, *, cool_off: str = COOL_OFF) -> stepwell.App:
    """Three functions with the same steps: `pinned` (upgrade="pinned"), `auto` (the default,
    "auto") and `diverging` (auto, but its first step's arguments differ between versions, so
    the replay check refuses to move its runs)."""
    app = stepwell.App("shop", version=version)

    async def flow(ctx: stepwell.Context, step: stepwell.Step, first_arg: int
                   ) -> dict[str, Any]:
        started = await step.run("start", lambda n: version, first_arg)
        if ctx.event.data.get("wait"):
            await step.wait_for_event("go", event="shop/go", match="data.key", timeout="1h")
            await step.sleep("cool-off", cool_off)
        finished = await step.run("finish", lambda: version)
        return {"started": started, "finished": finished}

    @app.function(id="pinned", trigger="shop/pinned", upgrade="pinned")
    async def pinned(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return await flow(ctx, step, 1)

    @app.function(id="auto", trigger="shop/auto")
    async def auto(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return await flow(ctx, step, 1)

    @app.function(id="diverging", trigger="shop/diverging", upgrade="auto")
    async def diverging(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        return await flow(ctx, step, 1 if version == "v1" else 2)

    return app


async def serve(db: str) -> None:
    engine = stepwell.Engine(make_app(os.environ["SHOP_VERSION"]), db=db, lease_seconds=LEASE_S,
                             poll_seconds=0.2)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with engine:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
