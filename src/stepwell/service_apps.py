"""The service layer's use cases for apps on the official Inngest SDKs: registration
(`POST /fn/register`), syncing an app by URL, the synced apps and their functions as the Go dev
server lists them, and the calls an SDK makes back during a run (batch, actions, checkpoints).

`SdkApps` is a part of `stepwell.service.Service` (its base class), kept in its own module for
size; use it through `Service`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from stepwell.core.config import ConfigError
from stepwell.core.protocol import ProtocolError, sign, steps_map
from stepwell.core.urlpolicy import AppUrlNotAllowed
from stepwell.runtime.checkpoint import CheckpointError
from stepwell.service_errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceError,
    SyncRefused,
    Unreachable,
)
from stepwell.service_views import function_config, iso, trigger_dict

if TYPE_CHECKING:
    from stepwell.runtime.worker import Worker

log = logging.getLogger("stepwell.sync")


class SdkApps:
    """SDK-app use cases; `Service` sets the state they share."""

    worker: Worker
    # The last refused registration per app URL (see `Service.__init__`).
    sync_errors: dict[str, dict[str, Any]]

    async def register_app(self, body: object) -> dict[str, Any]:
        """`POST /fn/register` from an SDK app."""
        if not isinstance(body, dict):
            raise InvalidInput("registration body must be a JSON object")
        url = str(body.get("url") or "")
        app_id = body.get("appName") or body.get("appname") or body.get("app_name")
        try:
            result = await self.worker.registrar.register(body)
        except AppUrlNotAllowed as exc:
            raise Forbidden(str(exc)) from exc
        except (ProtocolError, ConfigError) as exc:
            # Loud on purpose: the Python SDK answers the sync with 200 whatever we say here,
            # so without this log line and the Apps page a refused app just never runs.
            message = f"sync refused: {exc}"
            log.error("app %s at %s: %s", app_id or "(no id)", url or "(no url)", message)
            self.sync_errors[url.rstrip("/")] = {
                "app_id": app_id if isinstance(app_id, str) else None, "url": url,
                "error": message, "at": iso(int(time.time() * 1000))}
            raise InvalidInput(message) from exc
        self.sync_errors.pop(url.rstrip("/"), None)
        return result

    async def sync_app(self, url: object, *, signing_key: str | None = None) -> dict[str, Any]:
        """Ask the SDK app at `url` to register (`PUT`, as `inngest dev -u` does) and report
        what it registered.

        The app's answer is never echoed back: the URL is the caller's choice, so its body
        could be anything the server can reach (a metadata service, an admin page). A failure
        gives the status and a short reason of our own."""
        hint = "'url' must be the app's http(s) serve URL, e.g. http://127.0.0.1:3000/api/inngest"
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput(hint)
        try:
            if not httpx.URL(url).host:
                raise InvalidInput(f"{hint}; {url!r} names no host")
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"{hint}; {url!r} is not a valid URL: {exc}") from None
        policy = self.worker.remote_settings.app_urls
        if policy is not None:
            try:
                policy.check(url)
            except AppUrlNotAllowed as exc:
                raise Forbidden(str(exc)) from exc
        body = json.dumps({"url": url}).encode()
        headers = {"content-type": "application/json",
                   "x-inngest-server-kind": "cloud" if signing_key else "dev"}
        if signing_key:
            headers["x-inngest-signature"] = sign(body, signing_key, int(time.time()))
        before = self.worker.registrar.registrations
        started = iso(int(time.time() * 1000) - 1000)
        try:
            # Streamed and closed unread: only the status and headers are used, so a huge or
            # endless answer costs nothing.
            async with httpx.AsyncClient(timeout=30) as client, client.stream(
                    "PUT", url, content=body, headers=headers) as response:
                pass
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the app at {url}: {type(exc).__name__}: {exc}"
                              ) from exc
        # The SDK registers (POSTs to us) before it answers the PUT; its reported URL may spell
        # the host differently, so take the registration that arrived during the PUT.
        registrar = self.worker.registrar
        app_id = registrar.last_registration.get(url.rstrip("/"), registrar.last_app_id)
        if registrar.registrations == before or app_id is None:
            refused = self._refusal_since(url, started)
            if refused is not None:
                raise SyncRefused(f"the app at {url} was not synced: {refused['error']}")
            raise InvalidInput(f"the app at {url} answered HTTP {response.status_code} but did "
                               f"not register: {_sync_reason(response)}")
        return {"app_id": app_id, "url": url, "functions": [
            fn.spec.id for _, fn in self.worker.registry.items()
            if fn.spec.remote and fn.spec.app_id == app_id]}

    def _refusal_since(self, url: str, since: str | None) -> dict[str, Any] | None:
        """The refusal recorded for the app at `url` (its serve URL as given, or as the SDK
        reported it) since `since`, if any."""
        wanted = url.rstrip("/")
        for key, refusal in self.sync_errors.items():
            if (key == wanted or key.split("?")[0] == wanted) and (
                    since is None or str(refusal["at"]) >= since):
                return refusal
        return None

    async def list_apps(self) -> list[dict[str, Any]]:
        """Synced SDK apps, and apps whose last sync was refused (`error` says which function
        and why; a synced app whose later sync was refused keeps its functions)."""
        out = []
        refused = dict(self.sync_errors)
        for app_id, url, _body, checksum in await self.worker.read(lambda tx: tx.list_apps()):
            error = refused.pop(url.rstrip("/"), None)
            out.append({"app_id": app_id, "url": url, "checksum": checksum,
                        "error": error["error"] if error else None, "functions": [
                            fn.spec.id for _, fn in self.worker.registry.items()
                            if fn.spec.remote and fn.spec.app_id == app_id]})
        for url, error in refused.items():
            out.append({"app_id": error["app_id"], "url": url, "checksum": None,
                        "error": error["error"], "functions": []})
        return out

    async def dev_functions(self) -> list[dict[str, Any]]:
        """Every function as the Go dev server's `GET /dev` lists it: its registered config in
        Inngest's internal shape (`id`, `name`, `slug`, `triggers`, `steps` with their `uri`
        and retries, and the flow-control options as registered). Native functions are
        listed the same way, with no step URI."""
        out: list[dict[str, Any]] = []
        for _app_id, _url, body, _checksum in await self.worker.read(lambda tx: tx.list_apps()):
            for raw in body.get("functions") or []:
                if isinstance(raw, dict):
                    out.append(_go_function(raw))
        for qid, fn in sorted(self.worker.registry.native.items()):
            spec = fn.spec
            out.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"stepwell:{qid}")),
                        "fv": 1, "name": spec.name, "slug": spec.public_id,
                        "triggers": [trigger_dict(t) for t in spec.triggers],
                        "steps": [{"id": "step", "name": spec.name, "uri": "",
                                   "retries": spec.retries}], **function_config(spec)})
        return out

    async def run_batch(self, run_id: str) -> list[dict[str, Any]]:
        """`GET /v0/runs/{id}/batch`: the run's events, for SDK calls sent with use_api."""
        state = await self.worker.read(lambda tx: tx.load_run_state(run_id))
        if state is None:
            raise NotFound(f"no run {run_id!r}")
        return [e.to_dict() for e in state.events]

    async def checkpoint_async(self, run_id: str, body: object) -> dict[str, Any]:
        """`POST /v1/checkpoint/{id}/async`: step results a TypeScript SDK app ran inside the
        call it is answering (docs/checkpointing.md). 409 once that call lost the run."""
        try:
            stored = await self.worker.checkpoint_async(run_id, body)
        except CheckpointError as exc:
            error = ServiceError(str(exc))
            error.status = exc.status
            raise error from None
        return {"stored": stored}

    async def run_actions(self, run_id: str) -> dict[str, Any]:
        """`GET /v0/runs/{id}/actions`: the run's resolved memos, as the `steps` map."""
        state = await self.worker.read(lambda tx: tx.load_run_state(run_id))
        if state is None:
            raise NotFound(f"no run {run_id!r}")
        steps, _ = steps_map(state.memos.values(), self.worker.clock.now())
        return steps


def _sync_reason(response: httpx.Response) -> str:
    """Why a PUT to an app did not register it, in our words (see `Service.sync_app`)."""
    if "x-inngest-sdk" not in response.headers:
        return ("no Inngest SDK answered there (no x-inngest-sdk header); check the URL is "
                "the app's serve endpoint, e.g. http://127.0.0.1:3000/api/inngest")
    if response.status_code in (401, 403):
        return ("the SDK refused the request: check the app and the server use the same "
                "signing key (or both run in dev mode)")
    return ("the SDK answered without registering with this server: check the app's "
            "INNGEST_BASE_URL / INNGEST_DEV points here, and the app's own logs")


_GO_FUNCTION_KEYS = ("priority", "timeouts", "concurrency", "debounce", "checkpoint",
                     "batchEvents", "rateLimit", "throttle", "cancel", "singleton")


def _go_function(raw: dict[str, Any]) -> dict[str, Any]:
    """An SDK function's registration as Go's `inngest.Function` JSON (what `GET /dev` shows):
    the `steps` map becomes a list of `{id, name, uri, retries}`, concurrency a list of limits,
    and `idempotency` the 24 h rate limit Go turns it into."""
    slug = str(raw.get("id"))
    steps = []
    for step_id, step in sorted((raw.get("steps") or {}).items()):
        step = step if isinstance(step, dict) else {}
        retries = (step.get("retries") or {}).get("attempts")
        entry = {"id": step.get("id") or step_id, "name": step.get("name") or step_id,
                 "uri": (step.get("runtime") or {}).get("url", "")}
        if retries is not None:
            entry["retries"] = retries
        steps.append(entry)
    out: dict[str, Any] = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"stepwell:{slug}")),
                           "fv": 1, "name": raw.get("name") or slug, "slug": slug,
                           "triggers": list(raw.get("triggers") or []), "steps": steps}
    for key in _GO_FUNCTION_KEYS:
        if raw.get(key) is not None:
            out[key] = raw[key]
    concurrency = out.get("concurrency")
    if isinstance(concurrency, int):
        out["concurrency"] = [{"limit": concurrency}]
    elif isinstance(concurrency, dict):
        out["concurrency"] = [concurrency]
    if raw.get("idempotency") and "rateLimit" not in out:
        out["rateLimit"] = {"limit": 1, "period": "24h", "key": raw["idempotency"]}
    return out
