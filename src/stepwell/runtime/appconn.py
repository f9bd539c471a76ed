"""One keep-alive HTTP/1.1 connection to an SDK app, for the engine's calls (`sdkclient`).

Each call to an app went through httpx: per request, URL and header models, a cookie jar,
anyio cancel scopes, httpcore's pool and h11's pure-Python state machine. Profiled on
`stepwell serve` running the Python SDK app (issue 13), that was two thirds of the server's
CPU; the call itself is one POST on a connection the slot already holds. So a slot now holds
this: the request written as one buffer, the response parsed by httptools (llhttp, in C; the
parser uvicorn serves with), and an `AppResponse` handed back: the status, the headers, the
body, which is all `remote._classify` reads (an `httpx.Response` built for every call was a
fifth of the server's CPU on the SDK path). Errors are still `httpx.HTTPError`s, so the
code catching them is unchanged.

What it keeps of httpx's behaviour: TLS with the shared context, TCP_NODELAY, a timeout for
connecting and for each read (an app streaming keep-alive whitespace is not cut), no
redirects followed, chunked and gzip/deflate bodies, `Connection: close` honoured, and an idle
connection the app has closed detected before it is reused (never a retried POST). What it
does not do: proxies. `sdkclient` uses httpx when a proxy is configured in the environment.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import select
import socket
import ssl
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httptools
import httpx

READ_CHUNK = 65536
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
_SAFE_TARGET = "/?&=%:@!$'()*+,;~-._"


def proxy_configured() -> bool:
    """Whether the environment names a proxy (httpx would use it: then so does stepwell)."""
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)


class Reply(Protocol):
    """What is read of an app's answer: an `AppResponse`, or an `httpx.Response` (the httpx
    client used with a proxy)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...      # looked up in any case

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...


class ReplyHeaders(dict[str, str]):
    """Response headers by lower-case name (a repeated header's values joined by ", ", as
    `httpx.Headers.get` gives them); looked up in any case."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__()
        for name, value in pairs:
            key = name.lower()
            super().__setitem__(key, f"{self[key]}, {value}" if key in self else value)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class AppResponse:
    """An app's answer: status, headers and (decoded) body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: ReplyHeaders, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body as text, as httpx decodes it: the declared charset if Python knows it,
        else UTF-8, invalid bytes replaced."""
        return self.content.decode(_charset(self.headers.get("content-type", "")),
                                   errors="replace")


def reply_text(reply: Reply) -> str:
    """`reply.text` without its cost when no charset is declared (httpx parses the content
    type with the email package for every response): then it is UTF-8, as httpx would
    decode it, invalid bytes replaced."""
    if "charset" not in reply.headers.get("content-type", "").lower():
        return reply.content.decode("utf-8", errors="replace")
    return reply.text


def unwrap_streamed(reply: Reply, text: str) -> AppResponse:
    """A streamed answer (HTTP 201: keep-alive whitespace, then `{"status", "headers",
    "body"}`) as the response it wraps, keeping the SDK header of the outer one. ValueError,
    KeyError or TypeError when it is malformed."""
    wrapped = json.loads(text.strip())
    pairs = [*dict(wrapped.get("headers", {})).items(),
             ("x-inngest-sdk", reply.headers["x-inngest-sdk"])]
    if not all(isinstance(part, str) for pair in pairs for part in pair):
        raise TypeError("header names and values must be strings")
    return AppResponse(int(wrapped["status"]), ReplyHeaders(pairs),
                       str(wrapped.get("body", "")).encode())


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
    return "utf-8"


class _Response:
    """The parser's callbacks for one response."""

    __slots__ = ("body", "complete", "headers", "headers_done", "keep_alive", "parser", "status")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # Read here: once the message is complete, llhttp has reset them for the next one.
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _LazyRequest:
    """The `httpx.Request` an httpx error must carry, made only when one is raised."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self) -> httpx.Request:
        return httpx.Request("POST", self.url)


class AppConnection:
    """A connection to one origin (`scheme://host:port`), opened on first use and again after
    the app closes it. One request at a time (the slot that owns it guarantees that)."""

    def __init__(self, origin: str, tls: ssl.SSLContext) -> None:
        parts = urlsplit(origin)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, url: str, *, content: bytes, headers: dict[str, str],
                   timeout: float) -> AppResponse:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.isascii() or " " in target:
            target = quote(target, safe=_SAFE_TARGET)
        lines = [f"POST {target} HTTP/1.1", f"host: {parts.netloc.rpartition('@')[2]}",
                 "accept: */*", "accept-encoding: gzip, deflate", "user-agent: stepwell",
                 f"content-length: {len(content)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() not in ("host", "content-length")]
        request = _LazyRequest(url)
        text = "\r\n".join(lines)
        breaks = len(lines) - 1
        if text.count("\n") != breaks or text.count("\r") != breaks or "\x00" in text:
            # A value that came from an app (a step id) must not write headers of its own.
            raise httpx.LocalProtocolError("a request header or the URL holds CR, LF or NUL",
                                           request=request.get())
        head = (text + "\r\n\r\n").encode("utf-8")
        try:
            return await self._exchange(head + content, timeout, request)
        except BaseException:
            self.close()       # whatever was left half-read on it, it cannot be reused
            raise

    async def _exchange(self, data: bytes, timeout: float,
                        request: _LazyRequest) -> AppResponse:
        if self._writer is None or self._stale():
            self.close()
            await self._connect(timeout, request)
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        response = _Response()
        while not response.complete:
            try:
                async with asyncio.timeout(timeout):
                    chunk = await self._reader.read(READ_CHUNK)
            except TimeoutError:
                raise httpx.ReadTimeout(f"no answer within {timeout:g} s",
                                        request=request.get()) from None
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__,
                                      request=request.get()) from exc
            if not chunk:
                if response.headers_done and not _framed(response.headers):
                    break                          # a body that ends with the connection
                raise httpx.RemoteProtocolError("the app closed the connection before its "
                                                "response was complete", request=request.get())
            try:
                response.parser.feed_data(chunk)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"the app's response is not HTTP/1.1: {exc}",
                                                request=request.get()) from None
        if not response.keep_alive or not response.complete:
            self.close()
        body, headers = _decoded(b"".join(response.body), response.headers, request)
        return AppResponse(response.status, ReplyHeaders(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers), body)

    async def _connect(self, timeout: float, request: _LazyRequest) -> None:
        tls = self.tls if self.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=tls, server_hostname=self.host if tls else None,
                    limit=READ_CHUNK)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection within {timeout:g} s",
                                       request=request.get()) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__,
                                     request=request.get()) from exc
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            # Headers and body go in one write, but the next request must not wait for a
            # delayed ACK either (Nagle): set, as on every connection stepwell opens.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _stale(self) -> bool:
        """Whether the idle connection was closed by the app (or sent something unasked): a
        readable idle socket. Checked before reuse, so a POST is never sent into a closing
        connection (and never retried)."""
        assert self._writer is not None
        if self._writer.is_closing():
            return True
        sock = self._writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self._reader is not None and self._reader.at_eof())

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def aclose(self) -> None:
        writer = self._writer
        self.close()
        if writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the response says where its body ends (else it ends with the connection)."""
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


Headers = list[tuple[bytes, bytes]]


def _decoded(body: bytes, headers: Headers, request: _LazyRequest) -> tuple[bytes, Headers]:
    """The body without its content coding, and the headers without `content-encoding` (the
    body handed on is the decoded one)."""
    encoding = next((value.strip().lower() for name, value in headers
                     if name.lower() == b"content-encoding"), b"identity")
    if encoding in (b"", b"identity"):
        return body, headers
    plain = [(name, value) for name, value in headers if name.lower() != b"content-encoding"]
    try:
        if encoding in (b"gzip", b"x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS), plain
        if encoding == b"deflate":
            try:
                return zlib.decompress(body), plain
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS), plain   # raw deflate
    except zlib.error as exc:
        raise httpx.DecodingError(f"the app's {encoding.decode()} body is corrupt: {exc}",
                                  request=request.get()) from None
    raise httpx.DecodingError(f"the app answered with content-encoding {encoding.decode()!r}, "
                              "which was not asked for (gzip, deflate)", request=request.get())

