"""`POST /e/{key}` taken before Starlette's middleware stack and router: the event API's hot path.

The event API is the route senders call most, once per event or batch, and part of each request's
time went to the layers around its handler (issue 13's profiles): Starlette's error middleware,
the exception middleware, the router trying each route, the request-response wrapper and its
exception wrapper, each a coroutine and a wrapped `send`, none of which does anything for this
route. Skipping them saved about a tenth of the server's CPU per single event (bench/README.md).

`StepwellApp` hands a request for the event route straight to the same guards and the same
handler, composed as plain ASGI: `RequestGuard` (hosts, cross-site writes, JSON bodies) around
`RejectNulInUrl` around `event_endpoint`, which calls the route's handler and, when it raises,
the app's own exception handlers, chosen the way Starlette chooses them. So every answer, error
or not, is the one the router would give; only the layers that added nothing for this route are
skipped. Anything else, and an app mounted under a prefix (`root_path`, where Starlette's
routing rules apply), goes through Starlette as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

EVENT_PATH: Final = re.compile(r"/e/([^/]+)")       # the route `/e/{key}`: a key is `[^/]+`

Handler = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class StepwellApp(Starlette):
    """Starlette, with `POST /e/{key}` given to `event_app` (the guards around
    `event_endpoint`) instead of the middleware stack and router."""

    def __init__(self, *, event_app: ASGIApp, **options: Any) -> None:
        super().__init__(**options)
        self.event_app = event_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path")
                and (match := EVENT_PATH.fullmatch(scope["path"])) is not None):
            scope["app"] = self
            scope["path_params"] = {"key": match.group(1)}
            await self.event_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def event_endpoint(handler: Handler,
                   exception_handlers: Mapping[type[Exception], ErrorHandler]) -> ASGIApp:
    """The route's `handler` as an ASGI app, its exceptions answered by `exception_handlers`
    (the app's, looked up along the exception's class hierarchy as Starlette does). As in
    Starlette, an exception only the `Exception` handler takes is answered and then raised
    again, so the ASGI server logs it and closes the connection."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            on_error = next((exception_handlers[cls] for cls in type(exc).__mro__
                             if cls in exception_handlers), None)
            if on_error is None:
                raise
            await (await on_error(request, exc))(scope, receive, send)
            if on_error is exception_handlers.get(Exception):
                raise
            return
        await response(scope, receive, send)

    return app
