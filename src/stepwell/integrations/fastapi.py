"""FastAPI (and any Starlette app): the engine runs in the app's lifespan, handlers get it as a
dependency, and stepwell's API and dashboard mount under a prefix of the app.

    sw = Stepwell(stepwell.Engine(functions, db="sqlite:///app.db"))
    api = FastAPI(lifespan=sw.lifespan)
    api.mount("/stepwell", sw.asgi_app())

    @api.post("/orders")
    async def create(engine: Annotated[stepwell.Engine, Depends(sw.engine)]) -> dict[str, str]:
        return {"event": await engine.send("shop/order.created", {...})}

Nothing here imports FastAPI: the lifespan is a plain async context manager and the dependency
a plain function, so Starlette apps use the same object.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from stepwell.runtime.engine import Engine
from stepwell.server import guard
from stepwell.server.app import create_app
from stepwell.service import Service


def _keys(given: str | Sequence[str] | None, env: str) -> list[str] | None:
    if given is None:
        given = os.environ.get(env) or None
    if given is None:
        return None
    keys = [given] if isinstance(given, str) else list(given)
    return [k for k in keys if k] or None


class Stepwell:
    """One engine serving a FastAPI / Starlette app (one per process; see the topology guide).

    `event_key` / `signing_key` (default: env `INNGEST_EVENT_KEY` / `INNGEST_SIGNING_KEY`) put
    the mounted API in production mode, as `stepwell start` does: events need the event key,
    the REST API and the dashboard's data the signing key. Without them it is open (dev mode):
    mount it only where that is acceptable.

    `allowed_hosts` are the `Host` names the mounted API answers to, as `stepwell start
    --allowed-host` (default: the loopback names plus env `STEPWELL_ALLOWED_HOSTS`): add the
    names your app is served under, or `["*"]` when the host app checks `Host` itself.
    """

    def __init__(self, engine: Engine, *, event_key: str | Sequence[str] | None = None,
                 signing_key: str | Sequence[str] | None = None,
                 allowed_hosts: Sequence[str] | None = None) -> None:
        self._engine = engine
        self.service = Service(engine)
        self.event_keys = _keys(event_key, "INNGEST_EVENT_KEY")
        self.signing_keys = _keys(signing_key, "INNGEST_SIGNING_KEY")
        self.allowed_hosts = guard.allowed_hosts(
            allowed_hosts if allowed_hosts is not None
            else [os.environ.get(guard.HOSTS_ENV, "")])
        self._started = False

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the engine when the app starts, stop it (draining) when it stops. Pass it as
        `FastAPI(lifespan=sw.lifespan)`, or enter `sw.lifespan()` inside your own lifespan."""
        await self._engine.start()
        self._started = True
        try:
            yield
        finally:
            self._started = False
            await self._engine.stop()

    def engine(self) -> Engine:
        """The dependency: `engine: Annotated[stepwell.Engine, Depends(sw.engine)]`."""
        if not self._started:
            raise RuntimeError("the stepwell engine is not running: pass lifespan=sw.lifespan "
                               "to FastAPI(...) (or enter sw.lifespan() in your own lifespan)")
        return self._engine

    def asgi_app(self) -> Starlette:
        """stepwell's HTTP API (events, REST API v1, the SDK endpoint) and dashboard, to mount
        at any prefix: `app.mount("/stepwell", sw.asgi_app())` serves the dashboard at
        `/stepwell/dashboard` and the event API at `/stepwell/e/{key}`. The engine is the one
        the lifespan runs (a mounted app's own lifespan is not run by Starlette)."""
        return create_app(self.service, event_keys=self.event_keys,
                          signing_keys=self.signing_keys, allowed_hosts=self.allowed_hosts)
