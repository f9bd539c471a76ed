"""The Python SDK app `bench/sdk.py` measures: functions of 1, 3 and 10 `step.run` with trivial
bodies, served by FastAPI under uvicorn (as the SDK's docs serve it). `POST /_bench/noop`
answers `{}` at once: the app's own trivial-POST rate is the ceiling the SDK path is compared
with. Prints `bench app listening on http://127.0.0.1:PORT` once it accepts connections."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import fastapi
import inngest.fast_api
import uvicorn

client = inngest.Inngest(app_id="bench-py", is_production=False,
                         logger=logging.getLogger("bench-app"))
logging.getLogger("bench-app").setLevel(logging.ERROR)


def steps_fn(n: int) -> Any:
    @client.create_function(fn_id=f"steps-{n}", retries=0,
                            trigger=inngest.TriggerEvent(event=f"bench/steps.{n}"))
    async def steps(ctx: inngest.Context) -> int:
        total = 0
        for i in range(n):
            async def body(i: int = i) -> int:
                return i

            total += await ctx.step.run(f"s{i}", body)
        return total

    return steps


app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, [steps_fn(n) for n in (1, 3, 10)])


@app.post("/_bench/noop")
async def noop() -> dict[str, Any]:
    return {}


def main() -> None:
    # Bound the way `uvicorn.run(app, host=..., port=...)` binds (proto IPPROTO_TCP, so asyncio
    # gives accepted connections TCP_NODELAY), but on a port chosen before it prints its URL.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("PORT", "0"))))
    sock.listen(2048)
    print(f"bench app listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
