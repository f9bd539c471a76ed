"""Requests the server makes on a step's behalf: the `Gateway` (TS `step.fetch`) and
`AIGateway` (`step.ai.infer`) opcodes.

The SDK does not make these calls itself so that the app uses no compute while a slow upstream
answers: it reports the request as an opcode, the server performs it and saves the response as
the step's result, and the next call replays the handler with it. Each function returns either
the step's data or an error; the caller turns an error into a retried step error, like a
failed `StepRun` (shared/reference/inngest-protocol.md, section 3.2).

These are requests to URLs an app chose, made from the server's network, so they obey the
server's `--app-url-allow` list (core.urlpolicy) like every call to an app: the first URL and
every redirect hop are checked before they are requested (redirects are followed one hop at a
time, at most MAX_REDIRECTS, as Inngest's executor follows them with its dial-time checks). A
URL outside the list fails the step at once, without retries: the same URL would be refused
again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from stepwell.core.protocol import Op, ProtocolError
from stepwell.core.urlpolicy import AppUrlNotAllowed, AppUrlPolicy
from stepwell.sdk.usage import MAX_MODEL_NAME, ModelUsage

# A fetch is a plain HTTP call: generous, but a dead upstream must not hold a run for minutes.
FETCH_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Model inference can legitimately take minutes (long completions, reasoning models).
AI_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
EXCERPT_CHARS = 300
MAX_REDIRECTS = 10
ANTHROPIC_VERSION = "2023-06-01"
# Response headers that describe the wire encoding httpx has already undone: passing them on
# would make the SDK's `new Response(...)` claim a length or encoding the body no longer has.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding",
                           "connection", "keep-alive"})
# Statuses whose Response may not have a body (the Fetch standard rejects one, even "").
_NULL_BODY_STATUSES = frozenset({101, 103, 204, 205, 304})


@dataclass(frozen=True)
class Outcome:
    """The step's result (`data`) or why it failed (`error`, retried like a step error unless
    `retry` is False)."""

    data: Any = None
    error: dict[str, Any] | None = None
    retry: bool = True


def _error(name: str, message: str, *, retry: bool = True) -> Outcome:
    return Outcome(error={"name": name, "message": message, "stack": ""}, retry=retry)


class _Refused(Exception):
    """A URL (the first or a redirect's) outside the allow-list, or too many redirects."""


async def _send(client: httpx.AsyncClient, policy: AppUrlPolicy | None, what: str,
                request: httpx.Request) -> httpx.Response:
    """Send `request`, following redirects one hop at a time and checking each URL against
    `policy` before it is requested (httpx's own redirect following would not)."""
    for _ in range(MAX_REDIRECTS + 1):
        if policy is not None:
            try:
                policy.check(_redacted(str(request.url)), f"{what} URL")
            except AppUrlNotAllowed as exc:
                raise _Refused(str(exc)) from None
        response = await client.send(request, follow_redirects=False)
        if response.next_request is None:
            return response
        await response.aclose()
        request = response.next_request
    raise _Refused(f"{what}: stopped after {MAX_REDIRECTS} redirects (last to "
                   f"{_redacted(str(request.url))})")


def _url(op: Op) -> str:
    url = op.opts.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ProtocolError(f"{op.op} op {op.id}: opts.url must be an http(s) URL, got {url!r}")
    return url


def _headers(op: Op) -> dict[str, str]:
    raw = op.opts.get("headers") or {}
    if not isinstance(raw, dict):
        raise ProtocolError(f"{op.op} op {op.id}: opts.headers must be an object")
    return {str(k): str(v) for k, v in raw.items() if v is not None}


def _cause(exc: Exception) -> str:
    detail = str(exc) or "no detail"
    return f"{type(exc).__name__}: {detail}"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


async def fetch(client: httpx.AsyncClient, op: Op, policy: AppUrlPolicy | None = None
                ) -> Outcome:
    """Perform a `Gateway` request. Any HTTP status is a successful step (fetch semantics: the
    app inspects `res.status`); only a failure to get a response at all is an error. The data
    is what the SDK rebuilds its `Response` from: `{status_code, headers, body}`."""
    url = _url(op)
    method = str(op.opts.get("method") or "GET").upper()
    body = op.opts.get("body")
    content = None if body is None else body if isinstance(body, str) else json.dumps(body)
    try:
        response = await _send(client, policy, "step.fetch", client.build_request(
            method, url, headers=_headers(op), content=content, timeout=FETCH_TIMEOUT))
    except _Refused as exc:
        return _error("FetchError", f"step.fetch {method} {url}: {exc}", retry=False)
    except httpx.HTTPError as exc:
        return _error("FetchError", f"step.fetch {method} {url} failed: {_cause(exc)}")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _WIRE_HEADERS}
    text = None if response.status_code in _NULL_BODY_STATUSES else response.text
    return Outcome(data={"status_code": response.status_code, "headers": headers,
                         "body": text})


def canonical_header(name: str) -> str:
    """A header name as Inngest's Go server sends it (`X-Api-Key`, `Content-Type`): Go's
    canonical MIME form, the first letter and every letter after a hyphen upper-cased. Some
    providers' gateways and test doubles compare names case-sensitively."""
    if not name.isascii() or any(c in name for c in " \t:"):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _redacted(url: str) -> str:
    """The URL without its query string (Gemini's carries the API key), for error messages."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def _authorized(url: str, headers: dict[str, str], auth_key: str, fmt: str
                ) -> tuple[str, dict[str, str]]:
    """Add the provider's credentials the way its API expects them (Inngest's AI gateway)."""
    lowered = {k.lower() for k in headers}
    if fmt == "anthropic":
        if "anthropic-version" not in lowered:
            headers["anthropic-version"] = ANTHROPIC_VERSION
        if auth_key and "x-api-key" not in lowered:
            headers["x-api-key"] = auth_key
    elif fmt == "gemini":
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        if auth_key and not any(k == "key" for k, _ in query):
            url = urlunsplit(parts._replace(query=urlencode([*query, ("key", auth_key)])))
    elif fmt == "azure-openai":
        if auth_key and "api-key" not in lowered:
            headers["api-key"] = auth_key
    elif fmt == "bedrock":
        if auth_key and "authorization" not in lowered:
            headers["authorization"] = auth_key         # already a signed header value
    elif auth_key and "authorization" not in lowered:  # openai-chat, openai-responses, grok...
        headers["authorization"] = f"Bearer {auth_key}"
    return url, headers


async def infer(client: httpx.AsyncClient, op: Op, policy: AppUrlPolicy | None = None
                ) -> Outcome:
    """Perform an `AIGateway` request: POST `opts.body` as JSON to the provider with its auth;
    the step's data is the provider's JSON response. A non-2xx answer or a body that is not
    JSON is an error naming the status and the start of the body (the URL is shown without
    its query string, which may hold the key)."""
    fmt = str(op.opts.get("format") or "openai-chat")
    auth_key = op.opts.get("auth_key") or ""
    if not isinstance(auth_key, str):
        raise ProtocolError(f"AIGateway op {op.id}: opts.auth_key must be a string")
    url, headers = _authorized(_url(op), _headers(op), auth_key, fmt)
    if not any(k.lower() == "content-type" for k in headers):
        headers["content-type"] = "application/json"
    headers = {canonical_header(k): v for k, v in headers.items()}
    shown = _redacted(url)
    try:
        response = await _send(client, policy, "step.ai.infer", client.build_request(
            "POST", url, headers=headers, content=json.dumps(op.opts.get("body") or {}),
            timeout=AI_TIMEOUT))
    except _Refused as exc:
        return _error("AIGatewayError", f"step.ai.infer POST {shown}: {exc}", retry=False)
    except httpx.HTTPError as exc:
        return _error("AIGatewayError", f"step.ai.infer POST {shown} failed: {_cause(exc)}")
    if not 200 <= response.status_code < 300:
        return _error("AIGatewayError",
                      f"step.ai.infer: {shown} answered HTTP {response.status_code}: "
                      f"{_excerpt(response.text) or '(empty body)'}")
    try:
        data = response.json()
    except ValueError:
        return _error("AIGatewayError",
                      f"step.ai.infer: {shown} answered HTTP {response.status_code} with a "
                      f"body that is not JSON: {_excerpt(response.text) or '(empty body)'}")
    return Outcome(data=data)


def infer_usage(op: Op, data: object) -> dict[str, ModelUsage]:
    """The tokens a `step.ai.infer` response reports, by model, in whichever shape its
    provider uses (OpenAI chat: `usage.prompt_tokens` / `completion_tokens`; OpenAI responses
    and Anthropic: `usage.input_tokens` / `output_tokens`; Gemini: `usageMetadata.
    promptTokenCount` / `candidatesTokenCount`). The model is the one the response names, else
    the request's. Nothing when the response reports no usage."""
    if not isinstance(data, dict):
        return {}
    usage = data.get("usage")
    inp = out = None
    if isinstance(usage, dict):
        inp = usage.get("prompt_tokens", usage.get("input_tokens"))
        out = usage.get("completion_tokens", usage.get("output_tokens"))
    meta = data.get("usageMetadata")
    if isinstance(meta, dict):
        inp = meta.get("promptTokenCount", inp)
        out = meta.get("candidatesTokenCount", out)
    if not isinstance(inp, int) and not isinstance(out, int):
        return {}
    body = op.opts.get("body")
    model = data.get("model") or data.get("modelVersion") or (
        body.get("model") if isinstance(body, dict) else None) or "unknown"
    name = str(model)[:MAX_MODEL_NAME]
    return {name: ModelUsage(name, inp if isinstance(inp, int) else 0,
                             out if isinstance(out, int) else 0, 1)}
