"""How apps on the official SDKs arrive: the registration handshake (`POST /fn/register`), the
apps another process synced (read from the store at start-up and by every maintenance pass),
and the cron triggers of every function known here, armed as queue items.

The `Registry` holds the functions; the `Registrar` is what changes it at run time and keeps the
store (which every process reads) in step with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from stepwell.core.config import ConfigError
from stepwell.core.protocol import ProtocolError, Registration, parse_registration
from stepwell.core.urlpolicy import AppUrlPolicy
from stepwell.runtime.clock import Clock
from stepwell.runtime.registry import Registry, registration_checksum
from stepwell.store.base import Store

log = logging.getLogger("stepwell.engine")


class Registrar:
    """Applies SDK registrations to a registry and the store, and arms cron triggers.

    `registrations`, `last_registration` and `last_app_id` let the service tell whether a sync
    it asked an app for (`PUT` to the app's URL) came back, and as which app.
    """

    def __init__(self, registry: Registry, store: Store, clock: Clock,
                 app_urls: AppUrlPolicy | None) -> None:
        self.registry = registry
        self.store = store
        self.clock = clock
        self.app_urls = app_urls
        self.registrations = 0                         # SDK registrations received
        self.last_registration: dict[str, str] = {}    # app URL -> app id
        self.last_app_id: str | None = None

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an SDK app's registration (`POST /fn/register`): validate every function,
        store the app, and start routing events to it. Raises ProtocolError on a bad body."""
        # Hashing and validating a registration is CPU work proportional to its size (up to
        # 1,000 functions): done on a thread so the event loop keeps serving, and skipped when
        # the app is already loaded with this exact registration (every SDK re-sync).
        if not isinstance(body, dict):
            raise ProtocolError("registration body must be a JSON object")
        checksum = await asyncio.to_thread(registration_checksum, body)
        app_id = body.get("appName")
        if isinstance(app_id, str) and self.registry.checksums.get(app_id) == checksum:
            registration = self.registry.loaded[app_id]
        else:
            parsed = await asyncio.to_thread(parse_registration, body)
            registration = self.registry.load_app(body, checksum, parsed,
                                                  check=self._check_app_urls)
        now = self.clock.now()
        modified = await self.store.write(lambda tx: tx.save_app(
            registration.app_id, registration.url, body, checksum, now))
        await self.arm_crons()
        self.registrations += 1
        self.last_registration[registration.url.rstrip("/")] = registration.app_id
        self.last_app_id = registration.app_id
        return {"ok": True, "modified": modified, "app_id": registration.app_id,
                "functions": [f.spec.id for f in registration.functions]}

    def _check_app_urls(self, registration: Registration) -> None:
        """With an app URL allow-list, every URL an app registers (its serve URL and each
        function's step URL) must be in it; raises AppUrlNotAllowed before anything is kept."""
        policy = self.app_urls
        if policy is None:
            return
        policy.check(registration.url, f"URL app '{registration.app_id}' registered")
        for fn in registration.functions:
            policy.check(fn.url, f"step URL of function '{fn.spec.id}'")

    async def load_stored(self) -> None:
        """Pick up apps synced through any process (and at start-up)."""
        apps = await self.store.read(lambda tx: tx.list_apps())
        changed = False
        for app_id, _url, body, checksum in apps:
            if self.registry.checksums.get(app_id) == checksum:
                continue
            try:
                parsed = await asyncio.to_thread(parse_registration, body)
                self.registry.load_app(body, checksum, parsed)
                changed = True
            except (ProtocolError, ConfigError) as exc:
                log.error("stored app %s cannot be loaded: %s", app_id, exc)
        if changed:
            await self.arm_crons()

    async def arm_crons(self) -> None:
        """Queue the next tick of every cron trigger, keyed per function and trigger: `enqueue`
        on an existing key keeps that item (moving it only earlier), so re-arming, by any
        process, never doubles a tick."""
        now = self.clock.now()
        entries = [(key, trig.schedule.next_after(now), {"function_id": spec.qualified_id,
                                                         "index": index})
                   for key, index, trig, spec in self.registry.crons()]
        if entries:
            await self.store.write(lambda tx: [
                tx.enqueue("cron", key, due, payload=payload) for key, due, payload in entries])
