"""Every function an engine can run: native ones (Python handlers in this process) and remote
ones (served by official-SDK apps, as last synced), with the routing built from both."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from stepwell.core.config import ConfigError, CronTrigger, FunctionSpec, id_for_key
from stepwell.core.protocol import Registration, parse_registration
from stepwell.core.queue import cron_key
from stepwell.core.routing import Router
from stepwell.runtime.remote import RemoteFunction
from stepwell.runtime.scripts import Routing
from stepwell.sdk.app import App, Function

AnyFunction = Function | RemoteFunction


def registration_checksum(body: dict[str, Any]) -> str:
    """Identifies a registration's content, ignoring fields that change on every sync."""
    stable = {k: v for k, v in body.items() if k not in ("deployId", "deploy_id", "v")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


class Registry:
    def __init__(self, apps: Iterable[App]) -> None:
        self.native: dict[str, Function] = {}
        for app in apps:
            for fn in app.functions.values():
                if fn.qualified_id in self.native:
                    raise ConfigError(f"function '{fn.qualified_id}' is defined twice")
                self.native[fn.qualified_id] = fn
        self.remote: dict[str, RemoteFunction] = {}
        self.checksums: dict[str, str] = {}
        self.loaded: dict[str, Registration] = {}       # app id -> its registration
        self.sdks: dict[str, str] = {}              # app id -> its registration's `sdk`
        self.routing = self._routing()

    def _routing(self) -> Routing:
        specs = {qid: f.spec for qid, f in self.items()}
        return Routing(Router(specs.values()), specs)

    def items(self) -> Iterator[tuple[str, AnyFunction]]:
        yield from self.native.items()
        yield from self.remote.items()

    def get(self, qualified_id: str) -> AnyFunction | None:
        return self.native.get(qualified_id) or self.remote.get(qualified_id)

    def find(self, ref: object) -> AnyFunction | None:
        """A function by object, `app/fn`, bare `fn` (if unique), or an SDK-style composite id
        (`app-fn`, which is how official SDKs name invoke targets, native ones included)."""
        if isinstance(ref, Function | RemoteFunction):
            return self.get(ref.qualified_id)
        if not isinstance(ref, str):
            return None
        found = self.get(ref)
        if found is not None:
            return found
        matches = [f for _, f in self.items()
                   if ref in (f.spec.id, f"{f.spec.app_id}-{f.spec.id}")]
        return matches[0] if len(matches) == 1 else None

    def crons(self) -> Iterator[tuple[str, int, CronTrigger, FunctionSpec]]:
        for qid, fn in self.items():
            for index, trigger in enumerate(fn.spec.triggers):
                if isinstance(trigger, CronTrigger):
                    yield cron_key(id_for_key(qid), index), index, trigger, fn.spec

    def load_app(self, body: dict[str, Any], checksum: str,
                 registration: Registration | None = None,
                 check: Callable[[Registration], None] | None = None) -> Registration:
        """Replace an SDK app's functions with those of its latest registration (`body`, or
        `registration` when the caller already parsed it, off the event loop; `check`, if
        given, may refuse it by raising before anything is replaced)."""
        registration = registration or parse_registration(body)
        if check is not None:
            check(registration)
        clash = [s.spec.qualified_id for s in registration.functions
                 if s.spec.qualified_id in self.native]
        if clash:
            raise ConfigError(f"app '{registration.app_id}' registers {clash}, which this "
                              "process already defines natively")
        self.remote = {qid: fn for qid, fn in self.remote.items()
                       if fn.spec.app_id != registration.app_id}
        for item in registration.functions:
            self.remote[item.spec.qualified_id] = RemoteFunction(item.spec, item.url)
        self.checksums[registration.app_id] = checksum
        self.loaded[registration.app_id] = registration
        self.sdks[registration.app_id] = str(body.get("sdk") or "")   # e.g. "js:v4.24.0"
        self.routing = self._routing()
        return registration
