"""The ASGI app: Inngest's event API and REST API v1, stepwell's own routes, and the dashboard.

Who may call what: `/health`, `/openapi.json` and the dashboard's page and assets are open;
`/e/{key}` needs an event key in production mode; the SDK routes (`/fn/register`, `/v0/...`) need
the hashed signing key as the official SDKs send it; the REST API (`/v1/...`, which is also all
the dashboard reads) and `/dev` need the signing key as a bearer token. In dev mode (no keys)
everything is open, as on Inngest's dev server. Before any of that, `stepwell.server.guard`
refuses foreign Host names, cross-site writes and non-JSON bodies on every route. `POST /e/{key}`,
the route called most, is taken before Starlette's router (`stepwell.server.fastpath`) through
the same guards, handler and exception handlers.

Handlers are thin: they decode the request, call the service layer, and wrap its JSON-ready
result in Inngest's envelope (`{"data": ..., "metadata": ...}` for v1 routes). Every failure,
including unknown routes, oversize bodies and bugs, answers `{"error": "...", "status": N}` so
SDKs and scripts always get JSON they can show to a person.

Every JSON body comes in through `read_json` or, on the event API, `read_events`, and so
through `core.jsonsafe`: what cannot be stored and shown again is a 400 naming the field, on
every route alike (docs/limits.md). A URL holding NUL is refused before any route
(`RejectNulInUrl`); answers render even for rows an older version stored unsafely (`JSONOut`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stepwell.core import jsonsafe
from stepwell.core.config import ConfigError
from stepwell.core.models import MAX_EVENT_BYTES, MAX_EVENTS_PER_SEND
from stepwell.core.protocol import bearer_ok, event_key_ok, validate_event_key, validate_signing_key
from stepwell.core.storage import StorageFailure
from stepwell.core.traceparent import TRACEPARENT
from stepwell.server import metrics as prometheus
from stepwell.server import streams
from stepwell.server.dashboard import dashboard_routes
from stepwell.server.fastpath import ErrorHandler, StepwellApp, event_endpoint
from stepwell.server.guard import LOOPBACK_HOSTS, HostAllowList, RequestGuard
from stepwell.server.openapi import openapi_document
from stepwell.service import EventBatch, RunFilters, Service
from stepwell.service_errors import InvalidInput, PartialSend, ServiceError, parse_limit
from stepwell.service_views import iso

# Every JSON route accepts request bodies up to 3 MiB, the size of one event.
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
# The event API (`POST /e/{key}`, `POST /v1/events`) caps each event at MAX_EVENT_BYTES (3 MiB,
# as Inngest does) and the whole request at this much, so one send() of several large events
# goes through. Inngest streams the request with no total cap; stepwell holds it in memory, so
# it takes a bound that one process can afford many times over. See docs/limits.md.
MAX_EVENT_REQUEST_BYTES: Final = 32 * 1024 * 1024
# Sent by both official SDKs with every send, the same on each retry (see core.eventids).
EVENT_ID_SEED: Final = "x-inngest-event-id-seed"
DEFAULT_EVENT_LIMIT: Final = 20       # Inngest's default page size for GET /v1/events
DEFAULT_RUN_LIMIT: Final = 100
DEFAULT_PENDING_LIMIT: Final = 100    # GET /v1/functions/{id}/pending

Handler = Callable[[Request], Awaitable[Response]]


class PayloadTooLarge(ServiceError):
    status = 413


class Unauthorized(ServiceError):
    status = 401


class JSONOut(JSONResponse):
    """A JSON response that always renders: if the content holds what strict JSON cannot
    write (a non-finite number or a lone surrogate stored by an older version, or nesting too
    deep), it is shown repaired (`jsonsafe.repair`) rather than failing the whole request.
    The views mark the rows they repair (`degraded`); this is the last line behind them."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, RecursionError):
            return super().render(jsonsafe.repair(content)[0])


class NotImplementedByServer(ServiceError):
    """A route of Inngest's API that stepwell does not offer: a 4xx naming it (no server error:
    nothing failed, and the SDK fails the step with the message instead of retrying)."""

    status = 400


def error_response(status: int, message: str) -> JSONOut:
    return JSONOut({"error": message, "status": status}, status_code=status)


def envelope(data: Any, **metadata: Any) -> JSONOut:
    """Inngest's v1 envelope (plus `metadata` given, such as a page's `next_cursor`). Nothing
    is cached, so `cached_until` is the fetch time."""
    now = iso(int(time.time() * 1000))
    return JSONOut({"data": data, "metadata": {"fetched_at": now, "cached_until": now,
                                               **metadata}})


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB"


async def read_text(request: Request, limit: int = MAX_BODY_BYTES) -> str:
    """The request body as text, refusing bodies over `limit` bytes before reading them all
    (the declared length is checked first; a body without one is counted as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {int(declared)} bytes; at most "
                              f"{limit} bytes ({_mib(limit)}) are accepted")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"the request body is over {limit} bytes "
                                      f"({_mib(limit)}), the most that is accepted")
    except ClientDisconnect:
        # Nobody will read the answer; a 400 (not a crash with a traceback) ends the request.
        raise InvalidInput("the client went away before it sent the whole body") from None
    if not body.strip():
        raise InvalidInput("the request body is empty; send JSON")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the request body is not UTF-8 text: {exc}") from exc


def unsafe_message(exc: jsonsafe.UnsafeJSON) -> str:
    where = f"'{exc.path}'" if exc.path else "the request body"
    return f"{where} {exc.reason}"


async def read_json(request: Request) -> Any:
    """The request body as JSON, checked by `jsonsafe` (the one door every JSON body goes
    through): what it refuses, and text that is not JSON, is a 400 naming the field."""
    text = await read_text(request)
    try:
        return jsonsafe.parse(text)
    except jsonsafe.UnsafeJSON as exc:
        raise InvalidInput(unsafe_message(exc)) from None
    except ValueError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None


async def read_events(request: Request) -> EventBatch:
    """The event API's body: one event object or an array of them, parsed one event at a time
    so that each is held to MAX_EVENT_BYTES and the events before a broken one can still be
    stored (as Inngest does). The request as a whole may be MAX_EVENT_REQUEST_BYTES."""
    parsed = jsonsafe.parse_items(await read_text(request, MAX_EVENT_REQUEST_BYTES),
                                  max_item_bytes=MAX_EVENT_BYTES, max_items=MAX_EVENTS_PER_SEND)
    problem = parsed.error
    message: str | None = None
    if isinstance(problem, jsonsafe.UnsafeJSON):
        message = unsafe_message(problem)
    elif isinstance(problem, jsonsafe.ItemTooLarge):
        if not parsed.is_array:
            raise PayloadTooLarge(f"the event is {problem.size} bytes; at most "
                                  f"{MAX_EVENT_BYTES} bytes (3 MiB) are accepted per event")
        message = str(problem)
    elif problem is not None:
        message = f"the request body is not valid JSON: {problem}"
    if message is not None and not parsed.items and not parsed.is_array:
        raise InvalidInput(message)
    return EventBatch(parsed.items, parsed.is_array, message)


class RejectNulInUrl:
    """ASGI middleware: a URL whose path or query holds NUL (`%00`) is a 400 before any route
    sees it. No name or id may contain NUL (Postgres cannot store it in text, SQLite would
    store it and Postgres then fail on it), and this one check covers every path and query
    parameter of every route, as `jsonsafe` covers every body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = bytes(scope.get("query_string", b"")).lower()
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                response = error_response(400, "the URL contains the NUL character (%00); no "
                                               "name, id or query value may contain it")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def require_api_auth(request: Request, signing_keys: Collection[str]) -> None:
    """In production mode (signing keys configured) the REST API and the dashboard's calls
    need `Authorization: Bearer <signing key>`: the key as issued (`signkey-prod-...`), its hex
    part alone, or its SHA-256 as the official SDKs send it, compared in constant time by
    `bearer_ok`. Dev mode asks for nothing, as Inngest's dev server does.

    A missing key and a wrong key get different messages, so a person (or the dashboard) can
    tell "log in" from "that key is wrong"."""
    if not signing_keys:
        return
    header = request.headers.get("authorization")
    if bearer_ok(header, signing_keys):
        return
    if not header or not header.lower().startswith("bearer ") or not header[7:].strip():
        raise Unauthorized("this server runs in production mode: send the signing key as "
                           "'Authorization: Bearer signkey-...'")
    raise Unauthorized("the signing key was not accepted: it is not the server's signing key")


def _query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value if value else None


def create_app(service: Service, *, event_keys: Collection[str] | None = None,
               signing_keys: Collection[str] | None = None,
               allowed_hosts: str | Collection[str] | None = None,
               manage_engine: bool = False) -> Starlette:
    """The server's ASGI app over `service`.

    `event_keys=None` is dev mode: any key in `POST /e/{key}` is accepted, as the Inngest dev
    server does. `signing_keys` turn on production mode for the SDK routes, the REST API and
    the dashboard's data (see the module docstring). Keys too weak to protect anything raise
    ConfigError. `allowed_hosts` are the Host names the app answers to (None: the loopback
    names; `["*"]`: any); see `stepwell.server.guard`, which also refuses cross-site writes
    and non-JSON bodies on every route. With `manage_engine=True` the app starts the engine on
    ASGI startup and stops it on shutdown, for running it under a plain ASGI server
    (`stepwell dev` manages it itself).
    """
    keys = None if event_keys is None else [validate_event_key(k) for k in event_keys]
    signing = [validate_signing_key(k) for k in (signing_keys or [])]
    try:
        hosts = HostAllowList.of(allowed_hosts if allowed_hosts is not None else LOOPBACK_HOSTS)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc

    def require_sdk_auth(request: Request) -> None:
        """With signing keys configured (production mode), SDK calls must carry the hashed key
        as a bearer token; in dev mode anything goes (the SDKs send `Bearer undefined`)."""
        if signing and not bearer_ok(request.headers.get("authorization"), signing):
            raise Unauthorized("missing or wrong signing key: send 'Authorization: Bearer "
                               "<sha256 of your signing key>' as the official SDKs do")

    async def register(request: Request) -> Response:
        require_sdk_auth(request)
        result = await service.register_app(await read_json(request))
        return JSONOut({**result, "status": 200})

    async def sync_app(request: Request) -> Response:
        body = await read_json(request)
        url = body.get("url") if isinstance(body, dict) else None
        return envelope(await service.sync_app(url, signing_key=signing[0] if signing else None))

    async def list_apps(request: Request) -> Response:
        return envelope(await service.list_apps())

    async def run_batch(request: Request) -> Response:
        require_sdk_auth(request)
        return JSONOut(await service.run_batch(request.path_params["run_id"]))

    async def run_actions(request: Request) -> Response:
        require_sdk_auth(request)
        return JSONOut(await service.run_actions(request.path_params["run_id"]))

    async def checkpoint_async(request: Request) -> Response:
        require_sdk_auth(request)
        result = await service.checkpoint_async(request.path_params["run_id"],
                                                await read_json(request))
        return JSONResponse({**result, "status": 200})

    async def checkpoint_sync(request: Request) -> Response:
        require_sdk_auth(request)
        raise NotImplementedByServer(
            "durable endpoints (inngest.endpoint(), the synchronous checkpoint API "
            f"{request.url.path}) are not supported by stepwell; functions checkpoint through "
            "/v1/checkpoint/{run_id}/async")

    async def run_metadata(request: Request) -> Response:
        require_sdk_auth(request)
        raise NotImplementedByServer(
            "run metadata sent through the API (POST /v1/runs/{run_id}/metadata, e.g. "
            "step.metadata() aimed at another run or step) is not supported by stepwell; "
            "metadata set inside a step is accepted with the step's result and not stored")

    async def dev_info(request: Request) -> Response:
        return JSONOut({"version": "stepwell", "mode": "cloud" if signing else "dev",
                        "functions": await service.dev_functions(),
                        "apps": await service.list_apps()})

    async def send_events(request: Request) -> Response:
        key = request.path_params["key"]
        if keys is not None and not event_key_ok(key, keys):
            raise Unauthorized("event key not found: send events to /e/<your event key>")
        try:
            batch = await read_events(request)
        except InvalidInput as exc:      # Inngest's answer always carries `ids`
            raise PartialSend(exc.message, []) from None
        ids = await service.send_event_batch(batch, seed=request.headers.get(EVENT_ID_SEED),
                                             traceparent=request.headers.get(TRACEPARENT))
        return JSONOut({"ids": ids, "status": 200})

    async def get_run(request: Request) -> Response:
        return envelope(await service.get_run(request.path_params["run_id"]))

    async def replay_run(request: Request) -> Response:
        body = await read_json(request) if await request.body() else None
        return envelope(await service.replay_run(request.path_params["run_id"], body))

    async def rerun_run(request: Request) -> Response:
        """REST v2: `{"data": {"runId"}, "metadata": {"fetchedAt", "cachedUntil"}}`."""
        body = await read_json(request) if await request.body() else None
        data = await service.rerun_run(request.path_params["run_id"], body)
        now = iso(int(time.time() * 1000))
        return JSONResponse({"data": data, "metadata": {"fetchedAt": now, "cachedUntil": None}})

    async def cancel_run(request: Request) -> Response:
        return envelope(await service.cancel_run(request.path_params["run_id"]))

    async def list_runs(request: Request) -> Response:
        limit = parse_limit(request.query_params.get("limit"), DEFAULT_RUN_LIMIT)
        outputs = request.query_params.get("outputs", "true").strip().lower()
        if outputs not in ("true", "false"):
            raise InvalidInput(f"'outputs' must be true or false, got {outputs!r}")
        runs, cursor = await service.find_runs(
            RunFilters.from_params(request.query_params, limit), outputs=outputs == "true")
        return envelope(runs, next_cursor=cursor)

    async def list_events(request: Request) -> Response:
        limit = parse_limit(request.query_params.get("limit"), DEFAULT_EVENT_LIMIT)
        return envelope(await service.list_events(_query(request, "name"), limit))

    async def get_event(request: Request) -> Response:
        return envelope(await service.get_event(request.path_params["event_id"]))

    async def event_runs(request: Request) -> Response:
        return envelope(await service.event_runs(request.path_params["event_id"]))

    async def invoke_function(request: Request) -> Response:
        body = await read_json(request) if await request.body() else None
        return envelope(await service.invoke_function(request.path_params["function_id"], body))

    async def held_back(request: Request) -> Response:
        limit = parse_limit(request.query_params.get("limit"), DEFAULT_PENDING_LIMIT)
        return envelope(await service.held_back(request.path_params["function_id"], limit))

    async def bulk_cancel(request: Request) -> Response:
        return envelope(await service.bulk_cancel(await read_json(request)))

    async def decide_approval(request: Request) -> Response:
        body = await read_json(request)
        return envelope(await service.decide_approval(request.path_params["token"], body))

    async def stream_token(request: Request) -> Response:
        return envelope(await service.stream_token(await read_json(request)))

    async def subscribe_stream(request: Request) -> Response:
        """SSE (server/streams.py): a stream token is the credential, else the REST API's."""
        token = request.query_params.get("token")
        if token is None:
            require_api_auth(request, signing)
        return await streams.subscribe(service, request, token)

    async def send_signal(request: Request) -> Response:
        return envelope(await service.send_signal(await read_json(request)))

    async def functions(request: Request) -> Response:
        return envelope(service.list_functions_with_config())

    async def metrics(request: Request) -> Response:
        return Response(prometheus.render(await service.metrics()),
                        media_type=prometheus.CONTENT_TYPE)

    async def health(request: Request) -> Response:
        return JSONOut(service.health())

    async def openapi(request: Request) -> Response:
        return JSONOut(openapi_document())

    async def send_events_api(request: Request) -> Response:
        """Sending events with the REST API's credentials (the dashboard's "Send event"), so a
        person holding the signing key needs no event key as well."""
        batch = await read_events(request)
        if batch.error is not None:
            raise InvalidInput(f"{batch.error} (nothing was stored)")
        body = batch.items if batch.is_array else batch.items[0]
        return envelope({"ids": await service.send_events(
            body, seed=request.headers.get(EVENT_ID_SEED),
            traceparent=request.headers.get(TRACEPARENT))})

    async def run_events(request: Request) -> Response:
        return envelope(await service.run_events(request.path_params["run_id"]))

    async def run_history(request: Request) -> Response:
        return JSONOut(await service.run_history(request.path_params["run_id"]))

    async def versions(request: Request) -> Response:
        return envelope(await service.versions())

    async def function_stats(request: Request) -> Response:
        return envelope(await service.function_run_counts())

    def api(handler: Handler) -> Handler:
        """The REST API's guard: in production mode every call needs the signing key."""

        async def guarded(request: Request) -> Response:
            require_api_auth(request, signing)
            return await handler(request)

        guarded.__name__ = guarded.__qualname__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    routes = [
        # Open: liveness and the API's description.
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", api(metrics), methods=["GET"]),
        # Event keys (production) or anything (dev).
        Route("/e/{key}", send_events, methods=["POST"]),
        # SDK routes: the hashed signing key, as the official SDKs send it.
        Route("/fn/register", register, methods=["POST"]),
        Route("/v0/runs/{run_id}/batch", run_batch, methods=["GET"]),
        Route("/v0/runs/{run_id}/actions", run_actions, methods=["GET"]),
        Route("/v1/checkpoint/{run_id}/async", checkpoint_async, methods=["POST"]),
        Route("/v1/checkpoint", checkpoint_sync, methods=["POST"]),
        Route("/v1/checkpoint/{run_id}/steps", checkpoint_sync, methods=["POST"]),
        Route("/v1/runs/{run_id}/metadata", run_metadata, methods=["POST"]),
        # A signed, single-use approval token is the credential (service_approvals).
        Route("/v1/approvals/{token}", decide_approval, methods=["POST"]),
        # A stream token is the credential, or the REST API's (server/streams.py).
        Route("/v1/streams/{channel:path}", subscribe_stream, methods=["GET"]),
        # The REST API and the dev-server info: the signing key, raw or hashed.
        Route("/dev", api(dev_info), methods=["GET"]),
        Route("/v1/apps", api(list_apps), methods=["GET"]),
        Route("/v1/apps/sync", api(sync_app), methods=["POST"]),
        Route("/v1/events", api(list_events), methods=["GET"]),
        Route("/v1/events", api(send_events_api), methods=["POST"]),
        Route("/v1/events/{event_id}", api(get_event), methods=["GET"]),
        Route("/v1/events/{event_id}/runs", api(event_runs), methods=["GET"]),
        Route("/v1/runs", api(list_runs), methods=["GET"]),
        Route("/v1/functions/{function_id:path}/invoke", api(invoke_function), methods=["POST"]),
        Route("/v1/functions/{function_id:path}/pending", api(held_back), methods=["GET"]),
        Route("/v1/runs/{run_id}", api(get_run), methods=["GET"]),
        Route("/v1/runs/{run_id}", api(cancel_run), methods=["DELETE"]),  # Inngest's cancel
        Route("/v1/runs/{run_id}/cancel", api(cancel_run), methods=["POST"]),
        Route("/v1/runs/{run_id}/replay", api(replay_run), methods=["POST"]),
        Route("/v1/runs/{run_id}/events", api(run_events), methods=["GET"]),
        Route("/v1/runs/{run_id}/history", api(run_history), methods=["GET"]),
        # REST v2 (Inngest serves it under /api/v2; both work).
        Route("/v2/runs/{run_id}/rerun", api(rerun_run), methods=["POST"]),
        Route("/api/v2/runs/{run_id}/rerun", api(rerun_run), methods=["POST"]),
        Route("/v1/cancellations", api(bulk_cancel), methods=["POST"]),
        Route("/v1/signals", api(send_signal), methods=["POST"]),
        Route("/v1/stream-tokens", api(stream_token), methods=["POST"]),
        Route("/v1/functions", api(functions), methods=["GET"]),
        Route("/v1/stats/functions", api(function_stats), methods=["GET"]),
        Route("/v1/versions", api(versions), methods=["GET"]),
        # The dashboard's page and assets: public; the data they show comes from /v1/.
        *dashboard_routes(),
    ]

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        if isinstance(exc, PartialSend):     # Inngest's answer: the ids that were stored
            return JSONOut({"ids": exc.ids, "status": exc.status, "error": exc.message},
                                status_code=exc.status)
        response = error_response(exc.status, exc.message)
        if isinstance(exc, PayloadTooLarge):
            # The rest of the body was never read: the connection cannot carry another
            # request, and `Connection: close` says so rather than leaving the client to find
            # out with its next one.
            response.headers["connection"] = "close"
        if isinstance(exc, Unauthorized) and request.url.path.startswith(("/v1/", "/dev")):
            response.headers["www-authenticate"] = 'Bearer realm="stepwell"'
        return response

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message)

    async def on_storage_failure(request: Request, exc: Exception) -> Response:
        # The database's condition, not a bug: 507 (disk full) or 503, with when to retry.
        assert isinstance(exc, StorageFailure)
        response = error_response(exc.http_status, str(exc))
        if exc.retry_after_s is not None:
            response.headers["retry-after"] = str(exc.retry_after_s)
        return response

    async def on_crash(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this reply, so the ASGI server logs the traceback once,
        # and then closes the connection: `Connection: close` tells the client so, and it
        # sends its next request on a new connection instead of into a closed one.
        response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
        response.headers["connection"] = "close"
        return response

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_engine:
            await service.start()
        try:
            yield
        finally:
            if manage_engine:
                await service.stop()

    handlers: dict[Any, ErrorHandler] = {
        ServiceError: on_service_error, HTTPException: on_http_error,
        StorageFailure: on_storage_failure, Exception: on_crash}
    # The event API's hot path: the same guards and handler without the router (fastpath.py).
    event_app = RequestGuard(RejectNulInUrl(event_endpoint(send_events, handlers)), hosts=hosts,
                             routes=routes)
    guard = Middleware(RequestGuard, hosts=hosts, routes=routes)
    return StepwellApp(event_app=event_app, routes=routes, lifespan=lifespan,
                       middleware=[guard, Middleware(RejectNulInUrl)],
                       exception_handlers=handlers)
