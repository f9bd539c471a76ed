"""The Inngest SDK protocol, as pure functions: registration bodies to function specs, memos to
the `steps` map the SDKs replay from, response opcodes to typed ops, and request signing.

See shared/reference/inngest-protocol.md; section numbers below refer to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stepwell.core.config import Cancel, ConfigError, Cron, FunctionSpec, build_spec
from stepwell.core.durations import DurationError, parse_duration_ms, parse_timestamp_ms
from stepwell.core.expressions import ExpressionError, compile_expression
from stepwell.core.models import INPUT_PREFIX, Event, Memo

# Keys a registered function may carry (§1.2); anything else is rejected so a typo or an
# unsupported feature is reported at sync time instead of silently ignored.
KNOWN_FUNCTION_KEYS = frozenset({
    "id", "name", "triggers", "steps", "concurrency", "throttle", "rateLimit", "debounce",
    "batchEvents", "priority", "cancel", "idempotency", "singleton", "timeouts", "checkpoint",
    "retries", "optimizeParallelism"})
MAX_FUNCTIONS_PER_APP = 1_000
KNOWN_APP_KEYS = frozenset({
    "appName", "appname", "app_name", "deployType", "deploy_type", "url", "sdk", "v",
    "framework", "capabilities", "appVersion", "app_version", "featureObservations",
    "functions", "deployId", "deploy_id", "env", "platform"})
_MATCH_RE = re.compile(r"^\s*(event|async)\.([A-Za-z_][\w.]*)\s*==\s*(event|async)\.(\2)\s*$")


class ProtocolError(ValueError):
    """A registration or SDK response that does not follow the protocol."""


@dataclass(frozen=True)
class RemoteFunctionSpec:
    spec: FunctionSpec
    url: str


@dataclass(frozen=True)
class Registration:
    app_id: str
    url: str
    functions: list[RemoteFunctionSpec]


def _concurrency(raw: Any) -> Any:
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = {"limit": item}
        if isinstance(item, Mapping):
            if item.get("limit") == 0:          # Inngest: 0 means "no limit"
                continue
            out.append({k: v for k, v in item.items() if v is not None})
        else:
            out.append(item)
    return out or None


def _renamed(raw: Any, names: Mapping[str, str]) -> Any:
    if not isinstance(raw, Mapping):
        return raw
    return {names.get(k, k): v for k, v in raw.items() if v is not None}


def match_path_of(expression: str | None) -> str | None:
    """`event.data.x == async.data.x` (either way round) is a `match` on `data.x`: waits and
    cancellations written that way are matched by index rather than by evaluation."""
    if not expression:
        return None
    m = _MATCH_RE.match(expression)
    if m is None or m.group(1) == m.group(3):
        return None
    return m.group(2)


def parse_registration(body: Any) -> Registration:
    """Validate a `/fn/register` body and build a spec for every function (§1.2)."""
    if not isinstance(body, Mapping):
        raise ProtocolError("registration body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_APP_KEYS)
    if unknown:
        raise ProtocolError(f"registration has unknown keys {unknown}")
    app_id = body.get("appName") or body.get("appname") or body.get("app_name")
    if not isinstance(app_id, str) or not app_id:
        raise ProtocolError("App ID required: 'appName' must be a non-empty string")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ProtocolError(f"app '{app_id}': 'url' must be the app's http(s) serve URL")
    functions = body.get("functions")
    if not isinstance(functions, list):
        raise ProtocolError(f"app '{app_id}': 'functions' must be an array")
    if len(functions) > MAX_FUNCTIONS_PER_APP:
        raise ProtocolError(f"app '{app_id}' registers {len(functions)} functions; at most "
                            f"{MAX_FUNCTIONS_PER_APP} are allowed per app")
    try:
        specs = [_function_spec(app_id, url, raw) for raw in functions]
    except ProtocolError as exc:
        raise ProtocolError(f"app '{app_id}': {exc}") from None
    version = body.get("appVersion") or body.get("app_version")
    if isinstance(version, str) and version:
        # The SDK's `appVersion` option (`new Inngest({ id, appVersion })`): what runs record.
        specs = [dataclasses.replace(s, spec=dataclasses.replace(s.spec, version=version[:64]))
                 for s in specs]
    counts = Counter(s.spec.id for s in specs)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise ProtocolError(f"app '{app_id}': function ids {dupes} are registered twice")
    return Registration(app_id, url, specs)


def _step_url(app_url: str, fn_id: str) -> str:
    """The app's URL for a function's calls, its id %-encoded (ids may hold `/`, `&`, `?`...)."""
    parts = urlsplit(app_url)
    query = [*parse_qsl(parts.query), ("fnId", fn_id), ("stepId", "step")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _function_spec(app_id: str, app_url: str, raw: Any) -> RemoteFunctionSpec:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
        raise ProtocolError(f"app '{app_id}': every function needs a string 'id'")
    fn_id = raw["id"]
    unknown = sorted(set(raw) - KNOWN_FUNCTION_KEYS)
    if unknown:
        raise ProtocolError(f"function '{fn_id}': unknown options {unknown}; known: "
                            f"{sorted(KNOWN_FUNCTION_KEYS)}")
    triggers: list[Any] = []
    for trig in raw.get("triggers") or []:
        if isinstance(trig, Mapping) and "cron" in trig:
            triggers.append(Cron(str(trig["cron"])))
        elif isinstance(trig, Mapping) and "event" in trig:
            triggers.append(Event(str(trig["event"]), if_=trig.get("expression") or None))
        else:
            raise ProtocolError(f"function '{fn_id}': trigger {trig!r} has neither 'event' nor "
                                "'cron'")
    step = (raw.get("steps") or {}).get("step") or {}
    url = ((step.get("runtime") or {}).get("url")) or _step_url(app_url, fn_id)
    retries = (step.get("retries") or {}).get("attempts", raw.get("retries", 4))
    cancels = []
    for rule in raw.get("cancel") or []:
        if not isinstance(rule, Mapping):
            raise ProtocolError(f"function '{fn_id}': cancel rule {rule!r} is not an object")
        expression = rule.get("if")
        path = match_path_of(expression)
        cancels.append(Cancel(event=rule.get("event", ""), match=path,
                              if_=None if path else expression, timeout=rule.get("timeout")))
    try:
        spec = build_spec(
            app_id, fn_id, name=raw.get("name"), trigger=triggers, retries=retries,
            cancel_on=cancels or None,
            timeouts=_renamed(raw.get("timeouts"), {}),
            concurrency=_concurrency(raw.get("concurrency")),
            throttle=_renamed(raw.get("throttle"), {}),
            rate_limit=_renamed(raw.get("rateLimit"), {}),
            debounce=_renamed(raw.get("debounce"), {}),
            batch=_renamed(raw.get("batchEvents"), {"maxSize": "max_size", "if": "if_"}),
            priority=_renamed(raw.get("priority"), {}),
            idempotency=raw.get("idempotency") or None,
            singleton=_renamed(raw.get("singleton"), {}), remote=True)
    except ConfigError as exc:
        raise ProtocolError(str(exc)) from None
    return RemoteFunctionSpec(spec, url)


# --- call requests (§2, §4) ----------------------------------------------------------------


def memo_value(memo: Memo) -> Any:
    """A resolved memo as the SDKs expect it in `steps` (§4)."""
    if memo.kind == "sleep":
        return None
    if memo.error is not None:        # a failed step (a wait only fails on a signal conflict)
        return {"error": memo.error}
    if memo.kind == "wait":
        return memo.data              # the event itself (not wrapped), or null on timeout
    return {"data": memo.data}


def steps_map(memos: Iterable[Memo], now: int) -> tuple[dict[str, Any], list[str]]:
    """The `steps` map and `ctx.stack` for a call: only steps whose outcome is known, plus
    `{"input": [...]}` for a step a rerun gave new input and that has not run yet (the TS SDK
    then runs it with those arguments)."""
    memos = list(memos)
    done = [m for m in memos if m.kind != "input" and not m.pending and not m.sleeping(now)]
    done.sort(key=lambda m: (m.seq, m.ended_at))
    steps = {m.hash: memo_value(m) for m in done}
    for m in memos:
        target = m.hash.removeprefix(INPUT_PREFIX)
        if m.kind == "input" and target not in steps:
            steps[target] = {"input": m.data}
    return steps, [m.hash for m in done]


# --- responses (§3) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    id: str
    op: str
    name: str = ""
    display_name: str = ""
    data: Any = None
    error: dict[str, Any] | None = None
    opts: dict[str, Any] = field(default_factory=dict)


def parse_ops(body: Any) -> list[Op]:
    """The opcodes of a 206 response (an array, or a single legacy object)."""
    items = body if isinstance(body, list) else [body]
    ops = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("op"), str):
            raise ProtocolError(f"SDK response opcode {str(item)[:200]!r} has no 'op'")
        step_id = item.get("id")
        if not isinstance(step_id, str) or not step_id:
            raise ProtocolError(f"SDK response opcode {item['op']} has no step 'id'")
        error = item.get("error")
        ops.append(Op(step_id, item["op"], str(item.get("name") or ""),
                      str(item.get("displayName") or item.get("name") or ""),
                      item.get("data"), error if isinstance(error, dict) else None,
                      item.get("opts") or {}))
    return ops


def sleep_until(op: Op, now: int) -> int:
    """A Sleep op carries a duration ("3s", TS) or an ISO time (PY) in `name`, or
    `opts.duration`."""
    value = op.opts.get("duration") or op.name
    try:
        return now + parse_duration_ms(value, what="sleep")
    except DurationError:
        pass
    try:
        return parse_timestamp_ms(value, what="sleep")
    except DurationError as exc:
        raise ProtocolError(f"Sleep op {op.id}: {exc}") from None


def _timeout_ms(op: Op) -> int:
    """A waiting op's `opts.timeout` in ms (absent: 0, i.e. already timed out)."""
    timeout = op.opts.get("timeout")
    try:
        return 0 if not timeout else parse_duration_ms(timeout, what="timeout")
    except DurationError as exc:
        raise ProtocolError(f"{op.op} op {op.id}: {exc}") from None


def wait_request(op: Op) -> tuple[str, int, str | None, str | None]:
    """(event name, timeout ms, match path, remaining condition) of a WaitForEvent op."""
    event = op.opts.get("event") or op.name
    if not isinstance(event, str) or not event:
        raise ProtocolError(f"WaitForEvent op {op.id} names no event")
    timeout_ms = _timeout_ms(op)
    expression = op.opts.get("if") or None
    path = match_path_of(expression)
    condition = None if path else expression
    if condition is not None:
        # Checked now, so a bad or oversized condition fails this step instead of failing
        # the ingestion of every later event of that name.
        try:
            compile_expression(condition)
        except ExpressionError as exc:
            raise ProtocolError(f"WaitForEvent op {op.id} has an invalid 'if': {exc}") from None
    return event, timeout_ms, path, condition


SIGNAL_CONFLICTS = ("replace", "fail")


def signal_request(op: Op) -> tuple[str, int, str]:
    """(signal name, timeout ms, conflict policy) of a WaitForSignal op. The policy is what
    happens when another wait already holds the name: `replace` it or `fail` this step; the SDK
    types make `onConflict` required, and an op without one gets `fail`, which never strands
    the other waiter silently."""
    signal = op.opts.get("signal") or op.name
    if not isinstance(signal, str) or not signal:
        raise ProtocolError(f"WaitForSignal op {op.id} names no signal")
    timeout_ms = _timeout_ms(op)
    conflict = op.opts.get("conflict") or "fail"
    if conflict not in SIGNAL_CONFLICTS:
        raise ProtocolError(f"WaitForSignal op {op.id}: onConflict must be 'replace' or "
                            f"'fail', got {conflict!r}")
    return signal, timeout_ms, str(conflict)


def invoke_request(op: Op) -> tuple[str, dict[str, Any], int | None]:
    """(target composite id, event data, timeout ms) of an InvokeFunction op."""
    target = op.opts.get("function_id")
    if not isinstance(target, str) or not target:
        raise ProtocolError(f"InvokeFunction op {op.id} has no opts.function_id")
    payload = op.opts.get("payload") or {}
    data = payload.get("data") if isinstance(payload, Mapping) else None
    timeout = op.opts.get("timeout")
    try:
        timeout_ms = None if not timeout else parse_duration_ms(timeout, what="timeout")
    except DurationError as exc:
        raise ProtocolError(f"InvokeFunction op {op.id}: {exc}") from None
    return target, dict(data) if isinstance(data, Mapping) else {}, timeout_ms


def sdk_error(body: Any, status: int) -> dict[str, Any]:
    """The error of a failed call, from the SDK's JSON body when it has one."""
    if isinstance(body, Mapping):
        name = str(body.get("name") or "Error")
        message = str(body.get("message") or body.get("error") or "")
        return {"name": name, "message": message, "stack": str(body.get("stack") or ""),
                "error": f"invalid status code: {status}"}
    text = "" if body is None else str(body)[:1000]
    return {"name": "Error", "message": text or f"invalid status code: {status}", "stack": "",
            "error": f"invalid status code: {status}"}


# --- signing (§6) ----------------------------------------------------------------------------

# The SDKs strip `signkey-<env>-` with /^signkey-[\w]+-/ and hex-decode the rest (the Python
# SDK's `bytearray.fromhex` raises on anything else), so that is the format a key must have.
_PREFIX_RE = re.compile(r"^signkey-\w+-")
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
MIN_SIGNING_KEY_HEX = 32       # 128 bits; Inngest issues 64 hex digits (256 bits)
MIN_EVENT_KEY_CHARS = 16
MIN_DISTINCT_CHARS = 8         # a random 32-digit hex string has ~15; "0000..." or "abab..." not


def validate_signing_key(key: str) -> str:
    """A signing key as configured, checked: `signkey-<env>-<hex>` (or the hex part alone),
    with at least `MIN_SIGNING_KEY_HEX` hex digits that do not look made up by hand.

    Why refuse at start-up: an empty or tiny secret signs and authenticates nothing (with
    `signkey-prod-` any bearer `signkey-x-` matched the empty secret), and the official SDKs
    cannot even hash a non-hex key, so a bad key would only fail later and less clearly.
    Raises ConfigError saying what is wrong and what a good key looks like."""
    example = "signkey-prod-$(openssl rand -hex 32)"
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"the signing key is empty; generate one with: {example}")
    secret = signing_secret(key.strip())
    if key.strip().startswith("signkey-") and secret == key.strip():
        raise ConfigError("the signing key must look like signkey-<env>-<hex>, e.g. "
                          f"{example}")
    if not secret:
        raise ConfigError(f"the signing key {key.strip()!r} has no secret after its prefix; "
                          f"generate one with: {example}")
    if not _HEX_RE.match(secret):
        raise ConfigError(f"the signing key's secret (after signkey-<env>-) must be hex digits, "
                          f"an even number of them; got {len(secret)} characters that are "
                          f"not; generate one with: {example}")
    if len(secret) < MIN_SIGNING_KEY_HEX:
        raise ConfigError(f"the signing key's secret has {len(secret)} hex digits; at least "
                          f"{MIN_SIGNING_KEY_HEX} are required (Inngest's keys have 64): "
                          f"{example}")
    if len(set(secret.lower())) < MIN_DISTINCT_CHARS:
        raise ConfigError("the signing key's secret repeats a few digits (it looks typed, not "
                          f"random); generate one with: {example}")
    return key.strip()


def validate_event_key(key: str) -> str:
    """An event key as configured, checked: at least `MIN_EVENT_KEY_CHARS` characters that can
    appear in the `/e/{key}` path (no whitespace, `/`, `?` or `#`) and are not a short
    repetition. Raises ConfigError naming the problem."""
    example = "$(openssl rand -hex 32)"
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"the event key is empty; generate one with: {example}")
    if any(c.isspace() or c in "/?#%" or not c.isprintable() for c in key):
        raise ConfigError("the event key may not contain whitespace, '/', '?', '#' or '%' "
                          "(it is sent in the URL path /e/<key>)")
    if len(key) < MIN_EVENT_KEY_CHARS:
        raise ConfigError(f"the event key has {len(key)} characters; at least "
                          f"{MIN_EVENT_KEY_CHARS} are required: {example}")
    if len(set(key)) < MIN_DISTINCT_CHARS:
        raise ConfigError("the event key repeats a few characters (it looks typed, not "
                          f"random); generate one with: {example}")
    return key


def event_key_ok(key: str, keys: Iterable[str]) -> bool:
    """Constant-time membership of `key` among the configured event keys (every key is
    compared, so the time taken says nothing about which one, or how much, matched)."""
    ok = False
    for candidate in keys:
        ok |= hmac.compare_digest(key.encode("utf-8", "surrogatepass"),
                                  candidate.encode("utf-8", "surrogatepass"))
    return ok


def signing_secret(key: str) -> str:
    """The hex part of a signing key (`signkey-prod-<hex>` or bare hex)."""
    return _PREFIX_RE.sub("", key)


def sign(body: bytes, key: str, t: int) -> str:
    """`X-Inngest-Signature` for a request body at unix time `t`."""
    mac = hmac.new(signing_secret(key).encode(), body + str(t).encode(), hashlib.sha256)
    return f"t={t}&s={mac.hexdigest()}"


def hashed_key(key: str) -> str:
    """What SDKs send as `Authorization: Bearer ...`: sha256 of the hex-decoded key."""
    secret = signing_secret(key)
    try:
        raw = bytes.fromhex(secret)
    except ValueError:
        raw = secret.encode()
    return hashlib.sha256(raw).hexdigest()


def bearer_ok(header: str | None, keys: Iterable[str]) -> bool:
    """Constant-time check of an SDK's bearer token against the configured signing keys."""
    if not header or not header.lower().startswith("bearer "):
        return False
    token = _PREFIX_RE.sub("", header[7:].strip())
    if not token:
        return False
    ok = False
    for key in keys:
        for candidate in (hashed_key(key), signing_secret(key)):
            ok |= hmac.compare_digest(token.encode(), candidate.encode())
    return ok
