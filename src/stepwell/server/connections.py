"""HTTP connections with deadlines and a cap: uvicorn's h11 protocol, made slowloris-proof.

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

A connection closed for being slow gets `408 Request Timeout` (`503` when evicted) with
`Connection: close` if nothing was sent on it yet, so a real client learns why.
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_MAX_CONNECTIONS = 1000


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


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """An h11 protocol class for one server, enforcing `limits` (see the module docstring)."""
    cap = limits.max_connections or default_max_connections()
    # The connections waiting for a request head, oldest first: the eviction order.
    waiting: dict[GuardedH11Protocol, None] = {}

    class GuardedH11Protocol(H11Protocol):
        _phase: str = "new"                      # head | body | busy
        _deadline: asyncio.TimerHandle | None = None

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

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            self._set_phase("closed", None)
            super().connection_lost(exc)

        def _track(self) -> None:
            """Move to the phase h11's state says we are in, starting its deadline."""
            if self.transport.is_closing():
                self._set_phase("closed", None)
            elif self.conn.their_state is h11.IDLE:
                self._set_phase("head", limits.header_timeout)
            elif self.conn.their_state is h11.SEND_BODY:
                self._set_phase("body", limits.body_timeout)
            else:
                self._set_phase("busy", None)

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
            # h11 leaves SEND_RESPONSE when a response head is written: before that, the
            # client has had nothing for its current request and can be told why.
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(_raw_response(status, reason, message))
            self._set_phase("closed", None)
            self.transport.close()

    return GuardedH11Protocol


def server_config(app: Any, limits: ConnectionLimits | None = None,
                  **options: Any) -> uvicorn.Config:
    """The uvicorn configuration stepwell serves with: the guarded protocol, uvicorn's
    keep-alive timeout, and `options` passed through."""
    options.setdefault("timeout_keep_alive", 5)
    return uvicorn.Config(app, http=guarded_protocol(limits or ConnectionLimits()), **options)
