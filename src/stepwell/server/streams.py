"""`GET /v1/streams/{channel}`: a durable stream as Server-Sent Events.

Each item is one SSE event: `id:` its offset, `data:` the item as JSON (offset, topic, data,
run id, step, attempt, created_at). A browser's `EventSource` reconnects by itself and sends
`Last-Event-ID`, so it resumes after the last item it got: nothing lost, nothing twice. The
response ends only when the client goes away; a comment line every `HEARTBEAT_SECONDS` keeps
proxies from closing an idle one. New items wake the subscriber at once when published by this
process, and within `runtime.streams.POLL_SECONDS` from any other.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import StreamingResponse

from stepwell.core.streams import visible
from stepwell.service_streams import authorize, parse_start

if TYPE_CHECKING:
    from stepwell.service import Service

HEARTBEAT_SECONDS = 15.0
PAGE = 500


async def subscribe(service: Service, request: Request, token: str | None) -> StreamingResponse:
    """The SSE response. `token`: the subscription token to check (None: the request was let
    in by the REST API's credentials, which open every channel and topic)."""
    channel = request.path_params["channel"]
    topics = None if token is None else await authorize(service, channel, token)
    after = parse_start(request.query_params.get("from"), request.headers.get("last-event-id"))
    return StreamingResponse(_events(service, channel, topics, after),
                             media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _events(service: Service, channel: str, topics: set[str] | None,
                  after: int) -> AsyncIterator[bytes]:
    hub = service.worker.streams
    yield b": stepwell stream\n\n"
    beat = time.monotonic()
    while True:
        wake = hub.listen(channel)            # before the read: a publish meanwhile wakes us
        items = await service.engine.stream_items(channel, after=after, limit=PAGE)
        for item in items:
            after = item["offset"]
            if visible(item["topic"], topics):
                body = json.dumps(item, separators=(",", ":"))
                yield f"id: {after}\ndata: {body}\n\n".encode()
        if len(items) == PAGE:
            continue
        if time.monotonic() - beat >= HEARTBEAT_SECONDS:
            beat = time.monotonic()
            yield b": keep-alive\n\n"
        await hub.wait(wake)
