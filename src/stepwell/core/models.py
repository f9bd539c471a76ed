"""Domain models shared by every layer.

They are plain dataclasses with no behaviour that touches I/O, so the store, the runtime, the
server and user code can pass them around freely. Times are UTC epoch milliseconds everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, get_args

from typing_extensions import TypeVar

from stepwell.core import jsonsafe
from stepwell.core.jsonsafe import unsafe_integer, unsafe_integer_message
from stepwell.core.serialize import NotSerializableError, to_json_value

RunStatus = Literal["queued", "running", "completed", "failed", "cancelled", "skipped"]
ACTIVE_STATUSES: tuple[RunStatus, ...] = ("queued", "running")
TERMINAL_STATUSES: tuple[RunStatus, ...] = ("completed", "failed", "cancelled", "skipped")

# Step kinds recorded with each memo, so a replay can tell a sleep memo from a run memo.
# "input": not a step but an edited input for one (rerun from a step with new input; its
# hash is INPUT_PREFIX + the step's hash, so it never collides with the step's own result).
StepKind = Literal["run", "sleep", "wait", "send", "invoke", "input", "patch"]
INPUT_PREFIX = "input:"

EVENT_DEDUPE_WINDOW_MS = 24 * 3600 * 1000
MAX_EVENT_NAME_LENGTH = 256
# An event's own `id` (its idempotency key): long enough for any UUID, ULID or composite key,
# short enough to index. Inngest has no documented cap; see docs/limits.md.
MAX_EVENT_ID_LENGTH = 256
# Events in one send (Inngest's MaxEvents for one event API request).
MAX_EVENTS_PER_SEND = 5000

# System events (Inngest's names, so SDK apps interoperate).
FUNCTION_FAILED = "inngest/function.failed"
FUNCTION_FINISHED = "inngest/function.finished"
FUNCTION_CANCELLED = "inngest/function.cancelled"
FUNCTION_INVOKED = "inngest/function.invoked"
SCHEDULED_TIMER = "inngest/scheduled.timer"
# The events that report how a run ended. A run triggered by one of them emits none itself
# (Inngest's rule: finish handlers never trigger finish handlers), so they cannot form a loop.
LIFECYCLE_EVENTS = frozenset({FUNCTION_FAILED, FUNCTION_FINISHED, FUNCTION_CANCELLED})
# Inngest's limit on an event (its API's absolute maximum), applied to every event stepwell
# stores: sent through the API or `engine.send`, by a step, or emitted by the engine itself.
MAX_EVENT_BYTES = 3 * 1024 * 1024


def is_internal_event(name: str) -> bool:
    """Events in Inngest's reserved `inngest/` namespace."""
    return name.lower().startswith("inngest/")


def is_lifecycle_event(name: str) -> bool:
    return name in LIFECYCLE_EVENTS



class InvalidEventError(ValueError):
    """An event that cannot be accepted; nothing is stored for it. `index` is its position in
    the batch it came in, when it came in one."""

    index: int | None = None


# What an event's `data` is: a JSON object unless the event is declared with a model.
D = TypeVar("D", default=dict[str, Any])


@dataclass
class Event(Generic[D]):
    """An event, or, used as a trigger, an event name with an optional `if_` filter.

    One name serves both roles: `stepwell.Event("shop/order.created", if_="...")` as a trigger,
    `ctx.event` as the received event (`name`, `data`, `id`, `ts` in epoch ms, `user`).

    `stepwell.Event[OrderCreated]("shop/order.created")` declares an event whose data is the
    Pydantic model (or dataclass) `OrderCreated`: as a trigger, the handler's `ctx.event.data`
    is an `OrderCreated`; in `wait_for_event(event=...)` the returned event's is; given to
    `send` its data is validated first. (Not slotted: `Event[Model](...)` records the model on
    the instance as `__orig_class__`, standard typing behaviour.)
    """

    name: str
    data: D = field(default_factory=dict)  # type: ignore[assignment]
    id: str = ""
    ts: int = 0
    user: dict[str, Any] = field(default_factory=dict)
    if_: str | None = None

    @property
    def schema(self) -> Any | None:
        """The model an `Event[Model](...)` declaration names, else None."""
        declared = getattr(self, "__orig_class__", None)
        args = get_args(declared) if declared is not None else ()
        return args[0] if args else None

    def to_dict(self) -> dict[str, Any]:
        """The wire shape (Inngest's), used in storage, expressions and HTTP."""
        return {"name": self.name, "data": self.data, "id": self.id, "ts": self.ts,
                "user": self.user}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event[dict[str, Any]]:
        return Event(name=raw["name"], data=raw.get("data") or {}, id=raw.get("id") or "",
                   ts=int(raw.get("ts") or 0), user=raw.get("user") or {})


MAX_EVENT_TS_MS = 253_402_300_799_999      # 9999-12-31T23:59:59.999Z: fits every column


# Where an event keeps the JSON text of its `data` written while it was validated (see
# `stored_data_json`): an attribute, not a field, so that it is no part of the public Event.
_DATA_JSON = "_stepwell_data_json"
# Every integer beyond ±(2^53 - 1) is written with at least 16 digits: a JSON text without
# 16 digits in a row holds none, and need not be walked for them.
_LONG_DIGITS = re.compile(rb"[0-9]{16}")
_ABSENT: Any = object()


def stored_data_json(event: Event[Any]) -> str | None:
    """The compact JSON text of `event.data` as `normalize_send` wrote it to validate the
    event, if it is still the same object and the text is ASCII without DEL (then
    byte-identical to what the store's codec writes: encoding the event once, not again to
    store it), else None."""
    cached: tuple[object, str] | None = getattr(event, _DATA_JSON, None)
    if cached is None or cached[0] is not event.data:
        return None
    return cached[1]


def validate_event_payload(raw: object) -> int:
    """Reject what cannot be an event, naming the field and what is allowed. Returns its size
    as compact JSON in UTF-8 bytes (limited by the callers that store it: `normalize_send`)."""
    return _validated(raw)[0]


def _validated(raw: object) -> tuple[int, bytes | None]:
    """`validate_event_payload`, and the compact JSON of the event's `data` (None if it has
    none). The event is encoded in parts (its data, its user, the rest) and the size summed:
    the same bytes as encoding it whole, and the data's text can be stored as it is."""
    if not isinstance(raw, dict):
        raise InvalidEventError(
            f"an event must be an object with 'name' and 'data', got {type(raw).__name__}")
    data_json: bytes | None = None
    user_json: bytes | None = None
    try:   # first, so that no message below can carry text that cannot be shown
        rest = {k: v for k, v in raw.items() if k not in ("data", "user")}
        size = len(jsonsafe.dumps_checked(rest))
        for key in ("data", "user"):
            value = raw.get(key, _ABSENT)
            if value is _ABSENT:
                continue
            # One level below the event's own object, as when the event was encoded whole.
            text = jsonsafe.dumps_checked(value, key, max_depth=jsonsafe.MAX_JSON_DEPTH - 1)
            # `"key":` and the value, and a comma unless the object was empty ("{}").
            size += len(key) + 3 + len(text) + (1 if size > 2 else 0)
            if key == "data":
                data_json = text
            else:
                user_json = text
    except jsonsafe.UnsafeJSON as exc:
        raise InvalidEventError(f"event field '{exc.path}' {exc.reason}") from None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEventError("event has no 'name': a non-empty string is required")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise InvalidEventError(
            f"event name is {len(name)} characters; at most {MAX_EVENT_NAME_LENGTH} are allowed")
    data = raw.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEventError(
            f"event '{name}' has 'data' of type {type(data).__name__}; it must be an object")
    user = raw.get("user")
    if user is not None and not isinstance(user, dict):
        raise InvalidEventError(f"event '{name}' has 'user' that is not an object")
    eid = raw.get("id")
    if eid is not None and (not isinstance(eid, str)):
        raise InvalidEventError(f"event '{name}' has an 'id' that is not a string")
    if isinstance(eid, str) and len(eid) > MAX_EVENT_ID_LENGTH:
        raise InvalidEventError(f"event '{name}' has an 'id' of {len(eid)} characters; at "
                                f"most {MAX_EVENT_ID_LENGTH} are allowed")
    ts = raw.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)
                           or not 0 <= ts <= MAX_EVENT_TS_MS):
        raise InvalidEventError(f"event '{name}' has a 'ts' that is not epoch milliseconds "
                                f"between 0 and {MAX_EVENT_TS_MS} (year 9999)")
    unknown = set(raw) - {"name", "data", "id", "ts", "user", "v"}
    if unknown:
        raise InvalidEventError(
            f"event '{name}' has unknown fields {sorted(unknown)}; allowed: name, data, id, ts, "
            "user, v")
    if any(text is not None and _LONG_DIGITS.search(text) for text in (data_json, user_json)):
        big = unsafe_integer({"data": data, "user": user})
        if big is not None:
            raise InvalidEventError(unsafe_integer_message(f"event '{name}'", big))
    return size, data_json


def check_size(name: str, size: int) -> None:
    if size > MAX_EVENT_BYTES:
        raise InvalidEventError(f"event '{name}' is {size} bytes as JSON; at most "
                                f"{MAX_EVENT_BYTES} bytes (3 MiB) are accepted per event")


def _plain_data(name: str, data: Any) -> Any:
    """Event data given as a Pydantic model or a dataclass, as the JSON object it is stored as
    (anything else is left for `validate_event_payload` to name)."""
    if callable(getattr(data, "model_dump", None)) or (
            dataclasses.is_dataclass(data) and not isinstance(data, type)):
        try:
            return to_json_value(data, what=f"event '{name}' data")
        except NotSerializableError as exc:
            raise InvalidEventError(str(exc)) from None
    return data


def normalize_send(args: tuple[Any, ...], *, limit_size: bool = True
                   ) -> tuple[bool, list[Event]]:
    """What `send(...)` was given (`(name, data)`, an Event, a dict, or a list of these) as
    validated events, and whether it was one event (the caller then returns one id). Each is
    held to MAX_EVENT_BYTES as given (Inngest measures the event as sent), unless the caller
    checks the size itself (`limit_size=False`)."""
    if len(args) == 2 and isinstance(args[0], str):
        data = args[1]
        if data is not None and not isinstance(data, dict):     # a model or a dataclass
            data = _plain_data(args[0], data)
        raw_items: list[Any] = [{"name": args[0], "data": data}]
        single = True
    elif len(args) == 1:
        single = not isinstance(args[0], list | tuple)
        raw_items = [args[0]] if single else list(args[0])
    else:
        raise InvalidEventError(
            "send() takes (name, data), an Event, a dict, or a list of these")
    if len(raw_items) > MAX_EVENTS_PER_SEND:
        raise InvalidEventError(f"send() got {len(raw_items)} events; at most "
                                f"{MAX_EVENTS_PER_SEND} are accepted in one call")
    events = []
    for index, raw in enumerate(raw_items):
        payload = raw.to_dict() if isinstance(raw, Event) else raw
        try:
            if isinstance(payload, dict) and payload.get("data") is not None and not isinstance(
                    payload["data"], dict):
                payload = {**payload,
                           "data": _plain_data(str(payload.get("name")), payload["data"])}
            size, data_json = _validated(payload)
            if limit_size:
                check_size(str(payload.get("name")), size)
        except InvalidEventError as exc:
            exc.index = None if single else index     # the batch's invalid event, for callers
            raise
        event = Event.from_dict(payload)
        # ASCII without DEL: the codec (`ensure_ascii`) escapes U+007F, which isascii() allows.
        if data_json is not None and data_json.isascii() and b"\x7f" not in data_json:
            setattr(event, _DATA_JSON, (event.data, data_json.decode("ascii")))
        events.append(event)
    return single, events


def hash_step_id(step_id: str, occurrence: int) -> str:
    """Inngest's step hashing: sha1 of the id, with ':n' for the n-th repeat (n >= 1).

    Using the same scheme as the official SDKs lets native and SDK-driven runs share one state
    format.
    """
    key = step_id if occurrence == 0 else f"{step_id}:{occurrence}"
    return hashlib.sha1(key.encode()).hexdigest()


@dataclass(slots=True)
class Memo:
    """The stored outcome of one step."""

    hash: str
    step_id: str
    kind: StepKind
    seq: int                    # order in which the handler first reached this step
    data: Any = None            # JSON value; for a sleep, None
    error: dict[str, Any] | None = None
    fingerprint: str = ""       # hash of the step's arguments, to catch non-determinism
    due_at: int | None = None   # a sleep's wake time (the memo counts only once it has passed)
    attempts: int = 1
    started_at: int = 0
    ended_at: int = 0
    pending: bool = False       # a wait or invoke not yet resolved (outcome still unknown)

    def sleeping(self, now: int) -> bool:
        """A sleep whose wake time is still ahead of `now`: recorded, but not yet passed (the
        run may not go beyond it, and the step is not done)."""
        return self.kind == "sleep" and self.due_at is not None and self.due_at > now


@dataclass(slots=True)
class StepInfo:
    """One step on a run's timeline, as users see it."""

    id: str
    kind: str
    status: str                  # completed | failed | sleeping | waiting | errored
    attempts: int
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: int = 0
    ended_at: int | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Run:
    """A run as users see it (`engine.wait`, `engine.runs`, the HTTP API)."""

    id: str
    function_id: str
    status: RunStatus
    event_id: str | None
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    steps: list[StepInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    replay_of: str | None = None            # the run this one replays (`engine.replay`)
    version: str | None = None              # of its function's code, when it started

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


def error_dict(exc: BaseException, *, stack: str = "") -> dict[str, Any]:
    """The serialised shape of an error (Inngest's: name, message, stack)."""
    return {"name": type(exc).__name__, "message": str(exc), "stack": stack}
