"""Function configuration: the option classes users write, and their validation.

Everything here is pure. Validation happens once, when a function is defined (or an SDK app
syncs), and produces a `FunctionSpec` whose durations are milliseconds and whose expressions are
compiled, so nothing is parsed again at run time and bad configuration never reaches a run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from stepwell.core.cron import CronError, CronSchedule, parse_cron
from stepwell.core.durations import DurationError, format_duration, parse_duration_ms
from stepwell.core.expressions import (
    Expression,
    ExpressionError,
    compile_expression,
    match_expression,
)
from stepwell.core.models import Event

DurationLike = str | int | float | timedelta

MAX_RETRIES = 20
DEFAULT_RETRIES = 4
MAX_CANCEL_RULES = 5
MAX_CONCURRENCY_LIMITS = 2
# Beyond these a limit means "no limit" in practice, and the database columns holding them are
# 32-bit: refused at definition rather than failing at the first run.
MAX_CONCURRENCY = 100_000
MAX_FLOW_LIMIT = 1_000_000      # throttle / rate_limit `limit` and `burst`
MIN_PERIOD_MS = 1_000
MAX_PERIOD_MS = 7 * 24 * 3600 * 1000
MAX_SLEEP_MS = 366 * 24 * 3600 * 1000          # sleeps, waits and timeouts: at most a year
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def id_for_key(qualified_id: str) -> str:
    """A function id as it goes into a storage key (`cron:<id>:0`, `batch:<id>:<key>`...):
    SDK function ids may hold any character, so everything outside the characters native ids
    use is %-encoded (`%` included), which keeps every key that existed before unchanged and
    makes the encoding one-to-one."""
    return quote(qualified_id, safe="/:.-_")


class ConfigError(ValueError):
    """Invalid function configuration, raised at definition time."""


# ---------------------------------------------------------------------------------------------
# The classes users write (API.md). Plain dicts with the same keys are accepted everywhere.


@dataclass(frozen=True)
class Cron:
    """A cron trigger: `Cron("0 12 * * 5")` or `Cron("TZ=Europe/Paris 0 12 * * 5")`."""

    schedule: str


@dataclass(frozen=True)
class Concurrency:
    """A cap on concurrently *executing* runs (a sleeping or waiting run holds no slot).

    `limit` runs at once per value of `key` (a CEL expression over `event`; no key: one limit
    for the function). `scope` "fn" counts this function's runs, "env" and "account" every run
    sharing the key (a key is then required). FIFO within a key; other keys are never starved.
    `concurrency=` also takes an int (the limit) or a list of up to 2 limits.
    """

    limit: int
    key: str | None = None
    scope: Literal["fn", "env", "account"] = "fn"


@dataclass(frozen=True)
class Throttle:
    """Delay run starts beyond `limit` per `period` (plus `burst`), per `key`; none is dropped.

    A GCRA on run starts: excess runs wait in order, and the wait counts toward
    `Timeouts(start=)`.
    """

    limit: int
    period: DurationLike
    burst: int = 1
    key: str | None = None


@dataclass(frozen=True)
class RateLimit:
    """Skip runs beyond `limit` per `period`, per `key` (a GCRA).

    A skipped run is recorded with status "skipped" and the reason, so it stays visible.
    """

    limit: int
    period: DurationLike
    key: str | None = None


@dataclass(frozen=True)
class Debounce:
    """One run, `period` after the last event per `key`, with that last event.

    Every new event within `period` pushes the run back; `timeout` caps the total delay from the
    first event.
    """

    period: DurationLike
    key: str | None = None
    timeout: DurationLike | None = None


@dataclass(frozen=True)
class Batch:
    """Collect up to `max_size` events per `key`, or until `timeout`, then start one run.

    The handler gets them all in `ctx.events`. Events failing the `if_` expression are not
    batched: they start a run of their own.
    """

    max_size: int
    timeout: DurationLike
    key: str | None = None
    if_: str | None = None


@dataclass(frozen=True)
class Priority:
    """`run`: a CEL expression giving seconds (-600..600); the run is queued as if that much
    earlier (positive) or later (negative) than it was."""

    run: str


@dataclass(frozen=True)
class Singleton:
    """One active run per `key`: mode "skip" records the newcomer as skipped, "cancel" cancels
    the active run in favour of the new one."""

    key: str | None = None
    mode: Literal["skip", "cancel"] = "skip"


@dataclass(frozen=True)
class Cancel:
    """Cancel the run when `event` arrives: `match` names a field equal in both events
    (`"data.orderId"`), `if_` a CEL expression over `event` and `async` (the incoming one),
    `timeout` how long after the run started the rule holds. Up to 5 per function."""

    event: str
    match: str | None = None
    if_: str | None = None
    timeout: DurationLike | None = None


@dataclass(frozen=True)
class Timeouts:
    """Cancel a run still queued `start` after it was created (throttle and concurrency waits
    included), or not finished `finish` after it started."""

    start: DurationLike | None = None
    finish: DurationLike | None = None


# ---------------------------------------------------------------------------------------------
# The validated forms.


@dataclass(frozen=True)
class EventTrigger:
    """`name` is exact, or ends in `*` for a prefix wildcard (`app/user.*`)."""

    name: str
    condition: Expression | None = None

    @property
    def is_wildcard(self) -> bool:
        return self.name.endswith("*")


@dataclass(frozen=True)
class CronTrigger:
    schedule: CronSchedule
    source: str


Trigger = EventTrigger | CronTrigger


@dataclass(frozen=True)
class CancelRule:
    event: str
    condition: Expression | None      # over `event` (the run's) and `async` (the incoming one)
    match_path: str | None            # the equality part, kept apart so waits can be indexed
    timeout_ms: int | None


@dataclass(frozen=True)
class KeyedLimit:
    """The validated form shared by throttle, rate limit and concurrency."""

    limit: int
    period_ms: int = 0
    burst: int = 1
    key: Expression | None = None
    scope: str = "fn"


@dataclass(frozen=True)
class DebounceSpec:
    period_ms: int
    key: Expression | None
    timeout_ms: int | None


@dataclass(frozen=True)
class BatchSpec:
    max_size: int
    timeout_ms: int
    key: Expression | None
    condition: Expression | None


@dataclass(frozen=True)
class SingletonSpec:
    key: Expression | None
    mode: str


@dataclass(frozen=True)
class FunctionSpec:
    """Everything the engine needs to know about a function, validated."""

    app_id: str
    id: str
    name: str
    triggers: tuple[Trigger, ...]
    retries: int = DEFAULT_RETRIES
    cancel_on: tuple[CancelRule, ...] = ()
    timeout_start_ms: int | None = None
    timeout_finish_ms: int | None = None
    concurrency: tuple[KeyedLimit, ...] = ()
    throttle: KeyedLimit | None = None
    rate_limit: KeyedLimit | None = None
    debounce: DebounceSpec | None = None
    batch: BatchSpec | None = None
    priority: Expression | None = None
    idempotency: Expression | None = None
    singleton: SingletonSpec | None = None
    failure_of: str | None = None     # set on the generated on_failure function
    remote: bool = False              # served by an official-SDK app over HTTP
    version: str | None = None        # what runs started now record (`Function.version`)
    upgrade: str = "auto"             # may a run move to newer code (`App.function(upgrade=)`)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def qualified_id(self) -> str:
        return f"{self.app_id}/{self.id}"

    @property
    def public_id(self) -> str:
        """The id other parties use: an SDK app's composite id (`app-fn`), already unique,
        or `app/fn` for native functions."""
        return self.id if self.remote else self.qualified_id



# ---------------------------------------------------------------------------------------------
# Validation.

T = TypeVar("T")


class _Checker:
    """Builds error messages that always name the function and the option."""

    def __init__(self, function_id: str) -> None:
        self.function_id = function_id

    def fail(self, option: str, problem: str) -> ConfigError:
        return ConfigError(f"function '{self.function_id}': option '{option}' {problem}")

    def coerce(self, option: str, value: object, cls: type[T]) -> T:
        """Accept the config class or a dict with the same snake_case keys."""
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            aliases = {"if": "if_", "maxSize": "max_size"}
            raw = {aliases.get(str(k), str(k)): v for k, v in value.items()}
            unknown = sorted(set(raw) - set(allowed))
            if unknown:
                raise self.fail(option, f"has unknown keys {unknown}; allowed keys: {allowed}")
            try:
                return cls(**raw)
            except TypeError as exc:
                raise self.fail(option, f"is incomplete ({exc}); keys: {allowed}") from None
        raise self.fail(option, f"must be a {cls.__name__} or a dict, got {type(value).__name__}")

    def integer(self, option: str, value: object, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(option, f"must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(option, f"is {value}; allowed: {allowed}")
        return value

    def duration(self, option: str, value: object, lo: int = 0, hi: int | None = None) -> int:
        try:
            ms = parse_duration_ms(value, what=option)  # type: ignore[arg-type]
        except DurationError as exc:
            raise self.fail(option, f"is invalid: {exc}") from None
        if ms < lo or (hi is not None and ms > hi):
            allowed = f"{format_duration(lo)}..{format_duration(hi)}" if hi else (
                f">= {format_duration(lo)}")
            raise self.fail(option, f"is {format_duration(ms)}; allowed: {allowed}")
        return ms

    def expression(self, option: str, value: object) -> Expression:
        if not isinstance(value, str):
            raise self.fail(option, f"must be an expression string, got {type(value).__name__}")
        try:
            return compile_expression(value)
        except ExpressionError as exc:
            raise self.fail(option, f"has an invalid expression: {exc}") from None

    def optional_expression(self, option: str, value: object) -> Expression | None:
        return None if value is None else self.expression(option, value)


def _event_name(check: _Checker, option: str, name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise check.fail(option, f"needs a non-empty event name, got {name!r}")
    if "*" in name[:-1]:
        raise check.fail(option, f"has '{name}': a wildcard '*' may only end the name")
    return name


def _trigger(check: _Checker, raw: object) -> Trigger:
    if isinstance(raw, str):
        return EventTrigger(_event_name(check, "trigger", raw))
    if isinstance(raw, Event):
        return EventTrigger(_event_name(check, "trigger", raw.name),
                            check.optional_expression("trigger.if_", raw.if_))
    if isinstance(raw, Cron):
        try:
            return CronTrigger(parse_cron(raw.schedule), raw.schedule)
        except CronError as exc:
            raise check.fail("trigger", f"has an invalid cron schedule: {exc}") from None
    if isinstance(raw, Mapping):
        if "cron" in raw:
            return _trigger(check, Cron(raw["cron"]))
        if "event" in raw:
            return _trigger(check, Event(raw["event"], if_=raw.get("if_", raw.get("expression"))))
    raise check.fail(
        "trigger",
        f"is {raw!r}; allowed: an event name ('shop/order.created', 'shop/order.*'), "
        "stepwell.Event(name, if_=...), stepwell.Cron('0 12 * * 5'), or a list of these")


def _cancel_rule(check: _Checker, raw: object) -> CancelRule:
    rule = check.coerce("cancel_on", raw, Cancel)
    name = _event_name(check, "cancel_on", rule.event)
    match_path = None
    parts: list[str] = []
    if rule.match is not None:
        try:
            parts.append(match_expression(rule.match))
        except ExpressionError as exc:
            raise check.fail("cancel_on.match", str(exc)) from None
        match_path = rule.match
    if rule.if_ is not None:
        check.expression("cancel_on.if_", rule.if_)
        parts.append(f"({rule.if_})")
    condition = check.expression("cancel_on", " && ".join(parts)) if parts else None
    timeout = None if rule.timeout is None else check.duration(
        "cancel_on.timeout", rule.timeout, 1, MAX_SLEEP_MS)
    return CancelRule(name, condition, match_path, timeout)


def _keyed(check: _Checker, option: str, value: object, cls: type[Any],
           needs_period: bool) -> KeyedLimit:
    cfg = check.coerce(option, value, cls)
    most = MAX_FLOW_LIMIT if needs_period else MAX_CONCURRENCY
    limit = check.integer(f"{option}.limit", cfg.limit, 1, most)
    period = check.duration(f"{option}.period", cfg.period, MIN_PERIOD_MS, MAX_PERIOD_MS) if (
        needs_period) else 0
    burst = check.integer(f"{option}.burst", getattr(cfg, "burst", 1), 1, MAX_FLOW_LIMIT)
    key = check.optional_expression(f"{option}.key", cfg.key)
    scope = getattr(cfg, "scope", "fn")
    if scope not in ("fn", "env", "account"):
        raise check.fail(f"{option}.scope", f"is {scope!r}; allowed: 'fn', 'env', 'account'")
    if scope != "fn" and key is None:
        raise check.fail(f"{option}.key", f"is required with scope '{scope}' (the key is what "
                         "functions share)")
    return KeyedLimit(limit, period, burst, key, scope)


def _concurrency(check: _Checker, value: object) -> tuple[KeyedLimit, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) > MAX_CONCURRENCY_LIMITS:
        raise check.fail("concurrency",
                         f"has {len(items)} limits; at most {MAX_CONCURRENCY_LIMITS} are allowed")
    out = []
    for item in items:
        raw = Concurrency(item) if isinstance(item, int) and not isinstance(item, bool) else item
        out.append(_keyed(check, "concurrency", raw, Concurrency, needs_period=False))
    return tuple(out)


_INCOMPATIBLE_WITH_BATCH = ("idempotency", "rate_limit", "cancel_on", "priority", "debounce",
                            "singleton")


def build_spec(app_id: str, fn_id: str, *, trigger: object, name: str | None = None,
               retries: object = DEFAULT_RETRIES, cancel_on: object = None,
               timeouts: object = None, concurrency: object = None, throttle: object = None,
               rate_limit: object = None, debounce: object = None, batch: object = None,
               priority: object = None, idempotency: object = None, singleton: object = None,
               failure_of: str | None = None, remote: bool = False) -> FunctionSpec:
    """Validate every option of a function definition; raise `ConfigError` on the first problem."""
    if remote:
        # An SDK app's function id is whatever string the SDK registered (Inngest accepts any
        # non-empty one: `billing/charge`, unicode, punctuation); it is encoded wherever it
        # goes into a URL or a key (`id_for_key`).
        if not isinstance(fn_id, str) or not fn_id:
            raise ConfigError(f"function id {fn_id!r} is invalid: it must be a non-empty string")
    elif not isinstance(fn_id, str) or not _ID_RE.match(fn_id):
        raise ConfigError(
            f"function id {fn_id!r} is invalid: use letters, digits, '-', '_', '.', ':' "
            "and start with a letter or digit")
    check = _Checker(fn_id)
    raw_triggers = trigger if isinstance(trigger, list | tuple) else [trigger]
    if (not raw_triggers and not remote) or trigger is None:
        raise check.fail("trigger", "is missing: give an event name, stepwell.Cron(...) or a list")
    triggers = tuple(_trigger(check, t) for t in raw_triggers)
    rules: tuple[CancelRule, ...] = ()
    if cancel_on is not None:
        raw_rules = cancel_on if isinstance(cancel_on, list | tuple) else [cancel_on]
        if len(raw_rules) > MAX_CANCEL_RULES:
            raise check.fail("cancel_on",
                             f"has {len(raw_rules)} rules; at most {MAX_CANCEL_RULES} are allowed")
        rules = tuple(_cancel_rule(check, r) for r in raw_rules)
    start_ms = finish_ms = None
    if timeouts is not None:
        tcfg = check.coerce("timeouts", timeouts, Timeouts)
        if tcfg.start is not None:
            start_ms = check.duration("timeouts.start", tcfg.start, 1, MAX_SLEEP_MS)
        if tcfg.finish is not None:
            finish_ms = check.duration("timeouts.finish", tcfg.finish, 1, MAX_SLEEP_MS)
    spec_batch = None
    if batch is not None:
        bcfg = check.coerce("batch", batch, Batch)
        spec_batch = BatchSpec(
            check.integer("batch.max_size", bcfg.max_size, 1, 1000),
            check.duration("batch.timeout", bcfg.timeout, 1, MAX_PERIOD_MS),
            check.optional_expression("batch.key", bcfg.key),
            check.optional_expression("batch.if_", bcfg.if_))
        given = {"idempotency": idempotency, "rate_limit": rate_limit, "cancel_on": cancel_on,
                 "priority": priority, "debounce": debounce, "singleton": singleton}
        for other in _INCOMPATIBLE_WITH_BATCH:
            if given[other]:
                raise check.fail("batch", f"cannot be combined with '{other}'")
    spec_debounce = None
    if debounce is not None:
        dcfg = check.coerce("debounce", debounce, Debounce)
        spec_debounce = DebounceSpec(
            check.duration("debounce.period", dcfg.period, MIN_PERIOD_MS, MAX_PERIOD_MS),
            check.optional_expression("debounce.key", dcfg.key),
            None if dcfg.timeout is None else check.duration(
                "debounce.timeout", dcfg.timeout, MIN_PERIOD_MS, MAX_PERIOD_MS))
    spec_singleton = None
    if singleton is not None:
        scfg = check.coerce("singleton", singleton, Singleton)
        if scfg.mode not in ("skip", "cancel"):
            raise check.fail("singleton.mode", f"is {scfg.mode!r}; allowed: 'skip', 'cancel'")
        spec_singleton = SingletonSpec(check.optional_expression("singleton.key", scfg.key),
                                       scfg.mode)
    spec_priority = None
    if priority is not None:
        pcfg = check.coerce("priority", priority, Priority)
        spec_priority = check.expression("priority.run", pcfg.run)
    return FunctionSpec(
        app_id=app_id, id=fn_id, name=name or fn_id, triggers=triggers,
        retries=check.integer("retries", retries, 0, MAX_RETRIES),
        cancel_on=rules, timeout_start_ms=start_ms, timeout_finish_ms=finish_ms,
        concurrency=() if concurrency is None else _concurrency(check, concurrency),
        throttle=None if throttle is None else _keyed(check, "throttle", throttle, Throttle, True),
        rate_limit=None if rate_limit is None else _keyed(
            check, "rate_limit", rate_limit, RateLimit, True),
        debounce=spec_debounce, batch=spec_batch, priority=spec_priority,
        idempotency=check.optional_expression("idempotency", idempotency),
        singleton=spec_singleton, failure_of=failure_of, remote=remote)

