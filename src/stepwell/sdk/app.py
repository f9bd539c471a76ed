"""`App` and the `@app.function` decorator."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepwell.core.config import ConfigError, FunctionSpec, build_spec
from stepwell.core.models import FUNCTION_FAILED, Event
from stepwell.sdk.versions import (
    DEFAULT_UPGRADE,
    check_upgrade,
    check_version,
    code_fingerprint,
)

Handler = Callable[..., Any]


@dataclass(eq=False)
class Function:
    """A defined function: its validated spec plus the handler (and its failure handler)."""

    spec: FunctionSpec
    handler: Handler
    app: App
    on_failure: Function | None = None
    # Event name (or wildcard) -> the model its data is declared as (`Event[Model](...)`).
    event_types: dict[str, Any] = field(default_factory=dict)

    def event_type(self, name: str) -> Any | None:
        """The declared data type of event `name` for this function's triggers, if any."""
        if name in self.event_types:
            return self.event_types[name]
        for pattern, schema in self.event_types.items():
            if pattern.endswith("*") and name.startswith(pattern[:-1]):
                return schema
        return None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def qualified_id(self) -> str:
        return self.spec.qualified_id

    @property
    def version(self) -> str:
        """The version runs started now record: the function's `version=`, else the app's,
        else a fingerprint of the handler's code (`sdk.versions`)."""
        return self.spec.version or code_fingerprint(self.handler)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def __repr__(self) -> str:
        return f"<stepwell function {self.qualified_id}>"


def _check_handler(fn_id: str, option: str, handler: object) -> Handler:
    if not callable(handler):
        raise ConfigError(f"function '{fn_id}': {option} must be callable (ctx, step)")
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return handler
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        raise ConfigError(f"function '{fn_id}': {option} must accept two arguments (ctx, step)")
    return handler


def declared_types(trigger: Any) -> dict[str, Any]:
    """The `Event[Model]("name")` declarations among a function's triggers."""
    found = trigger if isinstance(trigger, list | tuple) else [trigger]
    return {t.name: t.schema for t in found if isinstance(t, Event) and t.schema is not None}


class App:
    """A group of functions; its id prefixes theirs (`"shop/process-order"`)."""

    def __init__(self, id: str, *, version: str | None = None,
                 upgrade: str | None = None) -> None:
        """`version`: the version of this code (a release tag, a commit) that runs started on
        it record; default: a fingerprint of each handler's code (`Function.version`). Set,
        it also makes this app's workers *versioned*: each claims only runs of its version
        (docs/guides/deploying.md). `upgrade`: the default of its functions' `upgrade=`."""
        if not isinstance(id, str) or not id.strip() or "/" in id:
            raise ConfigError(f"app id {id!r} is invalid: a non-empty string without '/'")
        self.id = id
        self.version = check_version(f"app {id!r}", version)
        self.upgrade = check_upgrade(f"app {id!r}", upgrade) or DEFAULT_UPGRADE
        self.functions: dict[str, Function] = {}

    def function(self, *, id: str, trigger: Any, name: str | None = None, retries: int = 4,
                 concurrency: Any = None, throttle: Any = None, rate_limit: Any = None,
                 debounce: Any = None, batch: Any = None, priority: Any = None,
                 idempotency: str | None = None, singleton: Any = None, cancel_on: Any = None,
                 timeouts: Any = None, on_failure: Handler | None = None,
                 version: str | None = None,
                 upgrade: str | None = None) -> Callable[[Handler], Function]:
        """Define a function: `@app.function(id=..., trigger=...)` over its handler.

        Every option is validated here, never at run time: a wrong one raises `ConfigError`
        naming the function, the option and what is allowed.

        Args:
            id: stable and unique within the app (runs are matched to the code by it).
            trigger: an event name (`"shop/order.created"`, wildcards `"shop/order.*"`), a
                `stepwell.Event(name, if_=...)`, a `stepwell.Cron(...)`, or a list of these.
            name: a display name (default: the id).
            retries: retries per step, 0..20 (default 4, so 5 attempts).
            concurrency: `Concurrency`, an int, or a list of up to 2.
            throttle: `Throttle`: delays run starts beyond a rate.
            rate_limit: `RateLimit`: skips runs beyond a rate.
            debounce: `Debounce`: one run after a quiet period, with the last event.
            batch: `Batch`: one run for several events (`ctx.events`).
            priority: `Priority`: queue some runs ahead of others.
            idempotency: a CEL expression; one run per value per 24 hours.
            singleton: `Singleton`: one active run per key.
            cancel_on: a list of up to 5 `Cancel`: events that cancel the run.
            timeouts: `Timeouts`: cancel runs queued or running too long.
            on_failure: a handler `(ctx, step)` run as its own durable function once a run
                has failed for good (`ctx.error`, and the original `ctx.event`).
            version: the version of this function's code that its runs record (default: the
                app's `version=`, else a fingerprint of the handler's code).
            upgrade: what versioned workers may do with a run of an older version:
                `"auto"` (default: move it to this code once no live worker of its version
                is left and its history replays cleanly here) or `"pinned"` (never: it waits
                for a worker of its own version). Default: the app's `upgrade=`.

        Every option also takes a plain dict with the same keys as its class.
        """
        if id in self.functions:
            raise ConfigError(f"function '{id}' is already defined in app '{self.id}'; "
                              "function ids must be unique within an app")
        spec = build_spec(self.id, id, trigger=trigger, name=name, retries=retries,
                          cancel_on=cancel_on, timeouts=timeouts, concurrency=concurrency,
                          throttle=throttle, rate_limit=rate_limit, debounce=debounce,
                          batch=batch, priority=priority, idempotency=idempotency,
                          singleton=singleton)
        explicit = check_version(f"function '{id}'", version)
        spec = dataclasses.replace(
            spec, upgrade=check_upgrade(f"function '{id}'", upgrade) or self.upgrade)
        failure = None
        if on_failure is not None:
            _check_handler(id, "on_failure", on_failure)
            failure_id = f"{id}-failure"
            failure_spec = build_spec(
                self.id, failure_id, name=f"{spec.name} (failure)", retries=retries,
                trigger=Event(FUNCTION_FAILED,
                              if_=f"event.data.function_id == '{spec.qualified_id}'"),
                failure_of=spec.qualified_id)
            failure_spec = dataclasses.replace(
                failure_spec, version=explicit or self.version or code_fingerprint(on_failure),
                upgrade=spec.upgrade)
            failure = Function(failure_spec, on_failure, self)

        def decorate(handler: Handler) -> Function:
            _check_handler(id, "the handler", handler)
            if id in self.functions:
                raise ConfigError(f"function '{id}' is already defined in app '{self.id}'")
            versioned = dataclasses.replace(
                spec, version=explicit or self.version or code_fingerprint(handler))
            fn = Function(versioned, handler, self, failure,
                          event_types=declared_types(trigger))
            self.functions[id] = fn
            if failure is not None:
                self.functions[failure.id] = failure
            return fn

        return decorate

    def __repr__(self) -> str:
        return f"<stepwell app {self.id} ({len(self.functions)} functions)>"
