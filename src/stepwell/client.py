"""`stepwell.Client`: send events to and read runs from a stepwell server over HTTP, from any
other process (a Django or Flask web worker, a script, a service in another language's stack).

There is one implementation, the async `AsyncClient`; `Client` is its blocking facade, which runs
the same coroutines on stepwell's private loop thread (`stepwell.loop_thread`), so it is safe to
share one `Client` between threads (a threaded WSGI server's). Use `client.aio` in async code.

It speaks the server's public API only: events go to Inngest's event API (`POST /e/{event_key}`,
or `POST /v1/events` with the signing key when no event key is given) and runs are read from the
REST API with the signing key as a bearer token, so it works with `stepwell dev` (no keys) and a
production server (`stepwell start` with `INNGEST_EVENT_KEY` and `INNGEST_SIGNING_KEY`) alike.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Final, cast
from urllib.parse import quote

import httpx

from stepwell.core.models import (
    TERMINAL_STATUSES,
    Run,
    RunStatus,
    StepInfo,
    normalize_send,
)
from stepwell.core.streams import RETRACTED_TOPIC
from stepwell.core.traceparent import caller_traceparent, stamp
from stepwell.loop_thread import block_on

DEFAULT_URL: Final = "http://127.0.0.1:8288"
_STATUSES: Final[dict[str, RunStatus]] = {
    "queued": "queued", "running": "running", "completed": "completed", "failed": "failed",
    "cancelled": "cancelled", "skipped": "skipped"}


class ClientError(Exception):
    """The server refused a request (`status` is its HTTP status) or could not be reached
    (`status` 0). The message is the server's own, which names what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


def _ms(value: object) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


def _step(raw: dict[str, Any]) -> StepInfo:
    return StepInfo(id=raw["id"], kind=raw["kind"], status=raw["status"],
                    attempts=raw["attempts"], output=raw.get("output"), error=raw.get("error"),
                    started_at=_ms(raw.get("started_at")) or 0, ended_at=_ms(raw.get("ended_at")),
                    failures=list(raw.get("failures") or []))


def run_from_api(raw: dict[str, Any]) -> Run:
    """A `Run` from the REST API's run shape (Inngest's, plus stepwell's fields)."""
    status = _STATUSES[str(raw["status"]).lower()]
    fn = str(raw["function_id"])
    app_id = raw.get("app_id")
    if app_id and "/" not in fn:
        fn = f"{app_id}/{fn}"
    error = raw.get("error")
    return Run(id=raw["run_id"], function_id=fn, status=status, event_id=raw.get("event_id"),
               created_at=_ms(raw.get("run_started_at")) or 0,
               started_at=_ms(raw.get("started_at")), ended_at=_ms(raw.get("ended_at")),
               output=None if status == "failed" else raw.get("output"), error=error,
               steps=[_step(s) for s in raw.get("steps") or []],
               warnings=list(raw.get("warnings") or []),
               event_ids=list(raw.get("event_ids") or []),
               parent_run_id=raw.get("parent_run_id"), replay_of=raw.get("replay_of"),
               version=raw.get("version"))


class AsyncClient:
    """The async client; see the module docstring. Safe to use from one event loop at a time
    (its connection pool belongs to the loop that first used it)."""

    def __init__(self, url: str | None = None, *, event_key: str | None = None,
                 signing_key: str | None = None, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("STEPWELL_URL") or DEFAULT_URL).rstrip("/")
        self.event_key = event_key if event_key is not None else os.environ.get(
            "INNGEST_EVENT_KEY")
        self.signing_key = signing_key if signing_key is not None else os.environ.get(
            "INNGEST_SIGNING_KEY")
        self.timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {"authorization": f"Bearer {self.signing_key}"} if self.signing_key else {}
            self._http = httpx.AsyncClient(base_url=self.url, headers=headers,
                                           timeout=self.timeout, transport=self._transport)
        return self._http

    async def _call(self, method: str, path: str, *, body: Any = None,
                    params: dict[str, Any] | None = None) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            reply = await self._client().request(method, path, json=body, params=query)
        except httpx.TransportError as exc:
            raise ClientError(0, f"cannot reach stepwell at {self.url}: {exc}") from exc
        try:
            payload = reply.json()
        except ValueError:
            payload = None
        if reply.is_error:
            detail = payload.get("error") if isinstance(payload, dict) else None
            raise ClientError(reply.status_code, str(detail or reply.text or reply.reason_phrase))
        return payload.get("data", payload) if isinstance(payload, dict) else payload

    async def send(self, *args: Any) -> str | list[str]:
        """As `Engine.send`: `(name, data)`, an `Event`, a dict, or a list of these; returns the
        id (or ids). The server has stored the events durably when this returns."""
        return await self._send(args, caller_traceparent())

    async def _send(self, args: tuple[Any, ...], traceparent: str | None) -> str | list[str]:
        """`traceparent`: the sender's trace context, read in the sender's thread (the sync
        client's calls run on another one)."""
        single, events = normalize_send(args)
        if not events:
            return []
        stamp(events, traceparent)            # the runs join the sender's trace
        body = [e.to_dict() for e in events]
        for raw in body:           # let the server stamp what was not given
            if not raw["id"]:
                del raw["id"]
            if not raw["ts"]:
                del raw["ts"]
        if self.event_key or not self.signing_key:
            reply = await self._call("POST", f"/e/{quote(self.event_key or 'dev', safe='')}",
                                     body=body)
        else:
            reply = await self._call("POST", "/v1/events", body=body)
        ids = cast(list[str], reply["ids"])
        return ids[0] if single else ids

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or None if the server has no such run."""
        try:
            raw = await self._call("GET", f"/v1/runs/{quote(run_id, safe='')}")
        except ClientError as exc:
            if exc.status == 404:
                return None
            raise
        return run_from_api(raw)

    async def runs(self, event_id: str | None = None, function_id: str | None = None,
                   status: str | None = None, limit: int = 100) -> list[Run]:
        """Runs, newest first, filtered as `Engine.runs` (without their step timelines)."""
        found = await self._call("GET", "/v1/runs", params={
            "event_id": event_id, "function_id": function_id, "status": status,
            "limit": limit})
        return [run_from_api(raw) for raw in found]

    async def wait(self, run_id: str, timeout: float = 30.0, *, poll: float = 0.1) -> Run:
        """The run once it has ended (TimeoutError after `timeout` real seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            run = await self.get_run(run_id)
            if run is None:
                raise KeyError(f"no run {run_id!r}")
            if run.status in TERMINAL_STATUSES:
                return run
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout}s")
            await asyncio.sleep(poll)

    async def wait_for_runs(self, event_id: str, timeout: float = 30.0, *, poll: float = 0.1
                            ) -> list[Run]:
        """The runs an event started, once there is at least one and all have ended: events are
        routed by the workers, so right after `send` there may be none yet."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.runs(event_id=event_id)
            if found and all(r.status in TERMINAL_STATUSES for r in found):
                return [await self.wait(r.id, max(deadline - time.monotonic(), 0)) for r in found]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the runs of event {event_id} have not all ended after "
                                   f"{timeout}s ({len(found)} started)")
            await asyncio.sleep(poll)

    async def cancel(self, run_id: str) -> Run:
        """Cancel a queued or running run (it stops at its next step boundary)."""
        return run_from_api(await self._call("POST", f"/v1/runs/{quote(run_id, safe='')}/cancel"))

    async def stream_token(self, channel: str, *, topics: list[str] | None = None,
                           ttl: str | float = "1h") -> str:
        """A subscription token for `channel` (see `Engine.stream_token`), to hand to a
        browser: it opens that channel only, until it expires."""
        body: dict[str, Any] = {"channel": channel, "ttl": ttl}
        if topics is not None:
            body["topics"] = topics
        data = await self._call("POST", "/v1/stream-tokens", body=body)
        return str(data["token"])

    async def subscribe(self, channel: str, *, token: str | None = None, from_offset: int = 1,
                        reconnect_delay: float = 0.5) -> AsyncIterator[dict[str, Any]]:
        """The items of a durable stream, from `from_offset`, as they are published
        (`{"offset", "topic", "data", "run_id", "step", "attempt", ...}`), forever: when the
        connection drops (a restart, a network blip) it reconnects after `reconnect_delay`
        seconds and resumes after the last item it yielded, so nothing is lost or repeated.
        `token`: from `stream_token`; without one the client's signing key is used. An item
        with topic `stepwell/retracted` withdraws what a failed step attempt published
        (docs: guides/streams.md)."""
        after = max(from_offset - 1, 0)
        path = f"/v1/streams/{quote(channel, safe=':/@+=')}"
        while True:
            params = {"token": token} if token is not None else {}
            headers = {"last-event-id": str(after)}
            try:
                async with self._client().stream(
                        "GET", path, params=params, headers=headers,
                        timeout=httpx.Timeout(self.timeout, read=None)) as reply:
                    if reply.is_error:
                        text = (await reply.aread()).decode(errors="replace")
                        raise ClientError(reply.status_code, _error_text(text, reply))
                    async for item in _sse_items(reply):
                        if item["offset"] > after:
                            after = item["offset"]
                            yield item
            except (httpx.TransportError, httpx.DecodingError):
                pass                                  # dropped: reconnect and resume
            await asyncio.sleep(reconnect_delay)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def drop_retracted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a subscriber should show of stream `items` (in offset order): the items minus those
    a later `stepwell/retracted` marker withdraws (those of a failed step attempt), markers
    removed. See docs/guides/streams.md."""
    kept: list[dict[str, Any]] = []
    for item in items:
        if item["topic"] == RETRACTED_TOPIC:
            gone = item["data"]
            mark = (gone.get("run_id"), gone.get("step"), gone.get("attempt"))
            kept = [i for i in kept if (i["run_id"], i["step"], i["attempt"]) != mark]
        else:
            kept.append(item)
    return kept


def _error_text(text: str, reply: httpx.Response) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return text or reply.reason_phrase
    detail = payload.get("error") if isinstance(payload, dict) else None
    return str(detail or text)


async def _sse_items(reply: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The `data:` of each Server-Sent Event (comments and `id:` lines skipped: the offset is
    in the data)."""
    data: list[str] = []
    async for line in reply.aiter_lines():
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


class Client:
    """The blocking client (thread-safe); `client.aio` is the same client for async code.

        client = stepwell.Client("http://127.0.0.1:8288")       # or env STEPWELL_URL
        event_id = client.send("shop/order.created", {"orderId": 1})
        [run] = client.wait_for_runs(event_id)
    """

    def __init__(self, url: str | None = None, *, event_key: str | None = None,
                 signing_key: str | None = None, timeout: float = 30.0) -> None:
        # Two instances of the one implementation: `_loop_client` lives on the private loop
        # thread that serves the blocking calls, `aio` on the caller's own loop.
        self._loop_client = AsyncClient(url, event_key=event_key, signing_key=signing_key,
                                        timeout=timeout)
        self.aio = AsyncClient(url, event_key=event_key, signing_key=signing_key,
                               timeout=timeout)
        self.url = self.aio.url

    def send(self, *args: Any) -> str | list[str]:
        return block_on(self._loop_client._send(args, caller_traceparent()))

    def get_run(self, run_id: str) -> Run | None:
        return block_on(self._loop_client.get_run(run_id))

    def runs(self, event_id: str | None = None, function_id: str | None = None,
             status: str | None = None, limit: int = 100) -> list[Run]:
        return block_on(self._loop_client.runs(event_id, function_id, status, limit))

    def wait(self, run_id: str, timeout: float = 30.0) -> Run:
        return block_on(self._loop_client.wait(run_id, timeout))

    def wait_for_runs(self, event_id: str, timeout: float = 30.0) -> list[Run]:
        return block_on(self._loop_client.wait_for_runs(event_id, timeout))

    def cancel(self, run_id: str) -> Run:
        return block_on(self._loop_client.cancel(run_id))

    def stream_token(self, channel: str, *, topics: list[str] | None = None,
                     ttl: str | float = "1h") -> str:
        """A subscription token for `channel` (subscribe with `client.aio.subscribe`)."""
        token: str = block_on(self._loop_client.stream_token(channel, topics=topics, ttl=ttl))
        return token

    def close(self) -> None:
        block_on(self._loop_client.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


