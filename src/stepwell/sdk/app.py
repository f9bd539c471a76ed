"""`App` and the `@app.function` decorator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepwell.core.config import ConfigError, FunctionSpec, build_spec
from stepwell.core.models import FUNCTION_FAILED, Event

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

    def __init__(self, id: str) -> None:
        if not isinstance(id, str) or not id.strip() or "/" in id:
            raise ConfigError(f"app id {id!r} is invalid: a non-empty string without '/'")
        self.id = id
        self.functions: dict[str, Function] = {}

    def function(self, *, id: str, trigger: Any, name: str | None = None, retries: int = 4,
                 concurrency: Any = None, throttle: Any = None, rate_limit: Any = None,
                 debounce: Any = None, batch: Any = None, priority: Any = None,
                 idempotency: str | None = None, singleton: Any = None, cancel_on: Any = None,
                 timeouts: Any = None, on_failure: Handler | None = None
                 ) -> Callable[[Handler], Function]:
        """Define a function; every option is validated here, never at run time."""
        if id in self.functions:
            raise ConfigError(f"function '{id}' is already defined in app '{self.id}'; "
                              "function ids must be unique within an app")
        spec = build_spec(self.id, id, trigger=trigger, name=name, retries=retries,
                          cancel_on=cancel_on, timeouts=timeouts, concurrency=concurrency,
                          throttle=throttle, rate_limit=rate_limit, debounce=debounce,
                          batch=batch, priority=priority, idempotency=idempotency,
                          singleton=singleton)
        failure = None
        if on_failure is not None:
            _check_handler(id, "on_failure", on_failure)
            failure_id = f"{id}-failure"
            failure_spec = build_spec(
                self.id, failure_id, name=f"{spec.name} (failure)", retries=retries,
                trigger=Event(FUNCTION_FAILED,
                              if_=f"event.data.function_id == '{spec.qualified_id}'"),
                failure_of=spec.qualified_id)
            failure = Function(failure_spec, on_failure, self)

        def decorate(handler: Handler) -> Function:
            _check_handler(id, "the handler", handler)
            if id in self.functions:
                raise ConfigError(f"function '{id}' is already defined in app '{self.id}'")
            fn = Function(spec, handler, self, failure, event_types=declared_types(trigger))
            self.functions[id] = fn
            if failure is not None:
                self.functions[failure.id] = failure
            return fn

        return decorate

    def __repr__(self) -> str:
        return f"<stepwell app {self.id} ({len(self.functions)} functions)>"
