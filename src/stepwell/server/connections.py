"""HTTP connections with deadlines and a cap: uvicorn's httptools protocol, made slowloris-proof.

uvicorn closes a keep-alive connection that stays silent after a response, but a connection
that never completes a request is never closed: a new one gets no timer at all, and every byte
received cancels the keep-alive timer. A client sending its request head one byte every few
seconds holds a connection (and a file descriptor) forever; about a thousand such clients left
no descriptors for anyone else. uvicorn has no option for it, so this protocol adds three:

- `header_timeout`: a request head must be complete this long after the connection opens or
  after the previous response ends (keep-alive), however the bytes trickle in;
- `body_timeout`: its body must be complete this long after the head;
- `max_connections`: past it, the connection that has waited longest for a request head is
  closed to make room (an idle keep-alive or a slow client; a connection whose request is being
  handled is never cut), or, when every connection is busy, the newcomer.

The protocol is uvicorn's httptools one (llhttp, in C) rather than h11 (pure Python): per
request it costs a fraction of h11's parsing and state machine, which was about a third of the
server's CPU per single event sent (issue 13). httptools has no limit on a request head, so one
is kept here: a head over MAX_HEAD_BYTES (h11's default) gets `431`.
A connection closed for being slow gets `408 Request Timeout` (`503` when evicted) with
`Connection: close` if nothing was sent on it yet, so a real client learns why.
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_MAX_CONNECTIONS = 1000
# The most a request head (request line and headers) may hold: h11's default, which stepwell
# served with before httptools (which has no limit).
MAX_HEAD_BYTES = 16 * 1024


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request head over MAX_HEAD_BYTES."""


def default_max_connections() -> int:
    """1000, or half the process's file-descriptor limit if that is lower (the engine needs
    descriptors too: database connections, calls to SDK apps)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    """See the module docstring. Seconds; `max_connections=None` picks the default."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if not self.header_timeout > 0 or not self.body_timeout > 0:
            raise ValueError("header and body timeouts must be positive numbers of seconds")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "status": status}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """An httptools protocol class for one server, enforcing `limits` (see the module
    docstring)."""
    cap = limits.max_connections or default_max_connections()
    # The connections waiting for a request head, oldest first: the eviction order.
    waiting: dict[GuardedProtocol, None] = {}

    class GuardedProtocol(HttpToolsProtocol):
        _phase: str = "new"                      # head | body | busy | closed
        _deadline: asyncio.TimerHandle | None = None
        # What the parser has read of the request it is on: "idle" (nothing since the last
        # one ended), "head" (part of a head), "body" (a head, not yet all of its body).
        _reading: str = "idle"
        _head_bytes = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)    # type: ignore[arg-type]
            self._track()
            if len(self.connections) > cap:
                victim = next((c for c in waiting if c is not self), None)
                if victim is not None:
                    victim._drop(503, "Service Unavailable", "the server is at its connection "
                                 "limit; this idle connection was closed to make room")
                else:
                    self._drop(503, "Service Unavailable", "the server is at its connection "
                               "limit; try again shortly")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._track()

        # Parser callbacks (httptools calls them from `feed_data`, inside data_received).
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading, self._head_bytes = "head", 0

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_head(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._reading = "body"
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._reading = "idle"
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase("closed", None)
            super().connection_lost(exc)

        def _count_head(self, size: int) -> None:
            """Hold a request head to MAX_HEAD_BYTES (httptools has no limit of its own): past
            it, answer 431 and stop parsing (the exception ends `feed_data`; uvicorn's own 400
            for it is not sent, the transport being closed already)."""
            self._head_bytes += size
            if self._head_bytes > MAX_HEAD_BYTES:
                self._drop(431, "Request Header Fields Too Large", "the request head (URL and "
                           f"headers) is over {MAX_HEAD_BYTES} bytes, the most accepted")
                raise HeadTooLarge

        def _track(self) -> None:
            """Move to the phase the connection is in, starting its deadline: a request's
            body being read has the body deadline, a request being handled none, and
            otherwise the connection waits for a head (the next one, on keep-alive)."""
            cycle = self.cycle
            if self.transport.is_closing():
                self._set_phase("closed", None)
            elif self._reading == "body":
                self._set_phase("body", limits.body_timeout)
            elif self.pipeline or (cycle is not None and not cycle.response_complete):
                self._set_phase("busy", None)
            else:
                self._set_phase("head", limits.header_timeout)

        def _set_phase(self, phase: str, timeout: float | None) -> None:
            if phase == self._phase:
                return                           # a deadline runs from the phase's start
            self._phase = phase
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)
            if phase == "head":
                waiting[self] = None
            if timeout is not None:
                self._deadline = self.loop.call_later(timeout, self._expire, phase)

        def _expire(self, phase: str) -> None:
            self._deadline = None
            what = "request head" if phase == "head" else "request body"
            limit = limits.header_timeout if phase == "head" else limits.body_timeout
            self._drop(408, "Request Timeout", f"the {what} did not arrive within {limit:g} s")

        def _drop(self, status: int, reason: str, message: str) -> None:
            """Close the connection, answering first if nothing was sent on it yet."""
            if self.transport.is_closing():
                return
            # A cycle whose response has not started: the client has had nothing for its
            # current request (or is between requests) and can be told why.
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(_raw_response(status, reason, message))
            self._set_phase("closed", None)
            self.transport.close()

    return GuardedProtocol


def server_config(app: Any, limits: ConnectionLimits | None = None,
                  **options: Any) -> uvicorn.Config:
    """The uvicorn configuration stepwell serves with: the guarded protocol, uvicorn's
    keep-alive timeout, and `options` passed through."""
    options.setdefault("timeout_keep_alive", 5)
    return uvicorn.Config(app, http=guarded_protocol(limits or ConnectionLimits()), **options)
