"""The OpenAPI document served at `/openapi.json`.

API.md promises that stepwell's additions to Inngest's API are described by a document the server
publishes; it is written by hand (not generated) because the routes are few and their shapes are
Inngest's, which no schema library would infer.
"""

from __future__ import annotations

from typing import Any


def _ok(description: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": "#/components/schemas/Envelope"}
    if data is not None:
        schema = {"allOf": [schema, {"properties": {"data": data}}]}
    return {"200": {"description": description,
                    "content": {"application/json": {"schema": schema}}},
            "default": {"$ref": "#/components/responses/Error"}}


def _param(name: str, where: str = "query", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": {"type": "string"}}


_RUN = {"$ref": "#/components/schemas/Run"}
_RUNS = {"type": "array", "items": _RUN}
_EVENT_IN = {"oneOf": [{"$ref": "#/components/schemas/EventIn"},
                       {"type": "array", "items": {"$ref": "#/components/schemas/EventIn"}}]}
_EVENTS = {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}
_SEED = {"name": "x-inngest-event-id-seed", "in": "header", "required": False,
         "description": "<epoch ms>,<base64 of 10 bytes>, as the official SDKs send it: events "
                        "without an id get ids derived from it, so a retried send stores "
                        "nothing twice",
         "schema": {"type": "string"}}
_IDS_ERROR = {"type": "object", "properties": {
    "ids": {"type": "array", "items": {"type": "string"}}, "status": {"type": "integer"},
    "error": {"type": "string"}}}
_EVENT_LIMITS = ("Each event at most 3 MiB as JSON, the request at most 32 MiB and 5000 "
                 "events; names and ids at most 256 characters. Every JSON body, on every "
                 "route, is refused with a 400 naming the field if it holds a non-finite "
                 "number (1e400, NaN), a lone surrogate or NUL, or nests deeper than 128 "
                 "levels (see docs/limits.md).")
# In production mode (the server has signing keys) the REST API needs the signing key as a
# bearer token; in dev mode nothing, hence the empty alternative.
_API_AUTH: list[dict[str, list[str]]] = [{}, {"signingKey": []}]


def _html(summary: str, parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A dashboard page: the same HTML for every page (the page routes itself)."""
    return {"get": {"summary": summary, "x-stepwell": True, "tags": ["dashboard"],
                    "parameters": parameters or [],
                    "responses": {"200": {"description": "the dashboard's HTML",
                                          "content": {"text/html": {"schema": {
                                              "type": "string"}}}},
                                  "default": {"$ref": "#/components/responses/Error"}}}}


def _dashboard_paths() -> dict[str, Any]:
    """The dashboard's page, client-side routes and assets (all public: the data they show
    is read from the REST API, which checks the signing key)."""
    return {
        "/": {"get": {"summary": "Redirects to the dashboard", "x-stepwell": True,
                      "tags": ["dashboard"],
                      "responses": {"307": {"description": "to /dashboard/runs"}}}},
        "/dashboard": _html("The dashboard"),
        "/dashboard/{page}": _html(
            "A dashboard page (runs, runs/{id}, events, events/{id}, functions, apps)",
            [{"name": "page", "in": "path", "required": True,
              "schema": {"type": "string"}}]),
        "/dashboard/assets/{name}": {"get": {
            "summary": "The dashboard's scripts and styles", "x-stepwell": True,
            "tags": ["dashboard"], "parameters": [_param("name", "path")],
            "responses": {"200": {"description": "the asset", "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}}}},
                          "default": {"$ref": "#/components/responses/Error"}}}},
    }


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Mark the REST API's operations (`/v1/...`, `/dev`, `/metrics`) with the signing key,
    except those that name their own credential (`"security": []`: a signed token)."""
    for path, operations in paths.items():
        if path.startswith("/v1/") or path in ("/dev", "/metrics"):
            for operation in operations.values():
                operation.setdefault("security", _API_AUTH)
    return paths


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "stepwell", "version": "1",
                 "description": "Inngest's event API and REST API v1, plus stepwell additions "
                                "(marked x-stepwell). On every route: a Host the server does not "
                                "answer to gets 421, a write from another site or origin 403, a "
                                "request body that is not application/json 415."},
        "paths": _secured({
            "/e/{key}": {"post": {
                "summary": "Send one event or an array of events (Inngest event API)",
                "description": _EVENT_LIMITS + " In a batch, the events before the first "
                               "invalid one are stored and their ids returned with the 400, "
                               "as Inngest does.",
                "parameters": [_param("key", "path"), _SEED],
                "requestBody": {"content": {"application/json": {"schema": _EVENT_IN}}},
                "responses": {"200": {"description": '{"ids": [...], "status": 200}'},
                              "400": {"description": "an invalid event: the ids of the events "
                                                     "before it, which were stored",
                                      "content": {"application/json": {"schema": _IDS_ERROR}}},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            "/v1/events": {
                "get": {"summary": "Events, newest first",
                        "parameters": [_param("name"), _param("limit")],
                        "responses": _ok("events", _EVENTS)},
                "post": {"summary": "Send one event or an array of events with the REST API's "
                                    "credentials (no event key); the dashboard's Send event",
                         "description": _EVENT_LIMITS + " All or nothing: one invalid event "
                                                        "stores none.",
                         "x-stepwell": True, "parameters": [_SEED],
                         "requestBody": {"content": {"application/json": {"schema": _EVENT_IN}}},
                         "responses": _ok("the stored events' ids", {
                             "type": "object", "properties": {
                                 "ids": {"type": "array", "items": {"type": "string"}}}})}},
            "/v1/events/{event_id}": {"get": {"summary": "One event",
                                              "parameters": [_param("event_id", "path")],
                                              "responses": _ok("the event")}},
            "/v1/events/{event_id}/runs": {"get": {
                "summary": "The runs an event started", "parameters": [_param("event_id", "path")],
                "responses": _ok("runs", _RUNS)}},
            "/v1/runs": {"get": {
                "summary": "Runs, newest first", "x-stepwell": True,
                "description": (
                    "Filters combine (AND). `status`: a status (or several, comma-separated) or "
                    "what an active run is doing (sleeping, waiting, invoking, retrying, "
                    "orphaned). `since`/`until`: when the run was queued (RFC 3339 or epoch "
                    "ms). `query`: a CEL condition on the triggering event such as "
                    "`data.userId == 42` or `event.data.userId == 42`, evaluated on at most "
                    "1000 runs per request. "
                    "`cursor`: the previous page's `metadata.next_cursor` (null on the last "
                    "page); pages are stable while runs are added. Each run has its derived "
                    "`state` (docs/rest-api.md)."),
                "parameters": [_param("function_id"), _param("status"), _param("event_id"),
                               _param("run_id"), _param("query"), _param("since"),
                               _param("until"), _param("cursor"), _param("limit"),
                               {"name": "outputs", "in": "query", "required": False,
                                "description": "false leaves out each run's output and error",
                                "schema": {"type": "string", "enum": ["true", "false"]}}],
                "responses": _ok("runs", _RUNS)}},
            "/v1/runs/{run_id}": {
                "get": {"summary": "One run with its step timeline",
                        "parameters": [_param("run_id", "path")], "responses": _ok("run", _RUN)},
                "delete": {"summary": "Cancel a run", "parameters": [_param("run_id", "path")],
                           "responses": _ok("the run after cancelling", _RUN)}},
            "/v1/runs/{run_id}/events": {"get": {
                "summary": "The events that triggered a run (several for a batch)",
                "x-stepwell": True, "parameters": [_param("run_id", "path")],
                "responses": _ok("events", _EVENTS)}},
            "/v1/runs/{run_id}/history": {"get": {
                "summary": "The run's recorded history, self-contained (`stepwell runs export`): "
                           "events, each step's recorded outcome, failed attempts, status; "
                           "what `stepwell check --histories` and `stepwell.testing.replay` read",
                "x-stepwell": True, "parameters": [_param("run_id", "path")],
                "responses": {"200": {"description": "the history (not enveloped)", "content": {
                    "application/json": {"schema": {"type": "object", "required": [
                        "format", "format_version", "run", "events", "steps"]}}}},
                    "404": {"description": "no such run"}}}},
            "/v1/versions": {"get": {
                "summary": "Per function: the version of its code here now and, per "
                           "version, its unfinished runs (runs, oldest), the live workers "
                           "serving it and its state (current, draining, stranded, drained); "
                           "`drained` once no unfinished run is of another version "
                           "(`stepwell versions`)",
                "x-stepwell": True,
                "responses": _ok("functions", {"type": "array", "items": {
                    "type": "object", "properties": {
                        "function_id": {"type": "string"},
                        "current": {"type": ["string", "null"]},
                        "defined": {"type": "boolean"}, "drained": {"type": "boolean"},
                        "versions": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "version": {"type": ["string", "null"]},
                                "runs": {"type": "integer"},
                                "oldest": {"type": ["string", "null"]},
                                "current": {"type": "boolean"},
                                "state": {"type": "string", "enum": [
                                    "current", "draining", "stranded", "drained"]},
                                "workers": {"type": "array", "items": {
                                    "type": "object", "properties": {
                                        "id": {"type": "string"}, "host": {"type": "string"},
                                        "pid": {"type": "integer"},
                                        "started_at": {"type": "string"},
                                        "heartbeat_at": {"type": "string"}}}}}}}}}})}},
            "/v1/stats/functions": {"get": {
                "summary": "Each function's number of runs by status (counted up to 1000 per "
                           "status; `capped` lists the statuses that reached it)",
                "x-stepwell": True,
                "responses": _ok("counts", {"type": "array", "items": {
                    "type": "object", "properties": {
                        "id": {"type": "string"}, "total": {"type": "integer"},
                        "counts": {"type": "object",
                                   "additionalProperties": {"type": "integer"}},
                        "capped": {"type": "array", "items": {"type": "string"}}}}})}},
            "/v1/runs/{run_id}/cancel": {"post": {
                "summary": "Cancel a run", "x-stepwell": True,
                "parameters": [_param("run_id", "path")],
                "responses": _ok("the run after cancelling", _RUN)}},
            "/v1/runs/{run_id}/replay": {"post": {
                "summary": "Run the run's function again with the same events; with "
                           "`from_step`, reuse the results of the steps recorded before it",
                "x-stepwell": True, "parameters": [_param("run_id", "path")],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"from_step": {"type": "string", "minLength": 1}}}}}},
                "responses": _ok("the new run", _RUN)}},
            "/v1/cancellations": {"post": {
                "summary": "Cancel the active runs of a function created in a time window",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["app_id", "function_id", "started_before"],
                    "properties": {k: {"type": "string"} for k in (
                        "app_id", "function_id", "started_after", "started_before", "if")}}}}},
                "responses": _ok("what was cancelled")}},
            "/v1/signals": {"post": {
                "summary": "Send a signal: resume the step waiting for it (step.waitForSignal) "
                           "with {signal, data}; 404 when nobody waits for it",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["signal"], "additionalProperties": False,
                    "properties": {"signal": {"type": "string", "minLength": 1}, "data": {}}}}}},
                "responses": _ok("the run the signal resumed", {
                    "type": "object", "properties": {"run_id": {"type": "string"}}})}},
            "/v1/approvals/{token}": {"post": {
                "summary": "Approve or deny a tool call a run waits on (a Pydantic AI agent's "
                           "`requires_approval` tool): the signed token from the run is the "
                           "credential, no API key; it works once (409 after), an expired "
                           "or forged token is refused (403), and a decision sent before the "
                           "run records its wait gets 425 (retry)", "x-stepwell": True,
                "security": [],
                "parameters": [_param("token", "path")],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["approved"], "additionalProperties": False,
                    "properties": {"approved": {"type": "boolean"},
                                   "reason": {"type": "string", "maxLength": 2000}}}}}},
                "responses": _ok("the run the decision resumed", {
                    "type": "object", "properties": {"run_id": {"type": "string"},
                                                     "approved": {"type": "boolean"}}})}},
            "/v1/stream-tokens": {"post": {
                "summary": "A token that lets its holder (a browser) subscribe to one channel "
                           "of durable streams (optionally some topics) until it expires",
                "x-stepwell": True,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["channel"], "additionalProperties": False,
                    "properties": {
                        "channel": {"type": "string", "maxLength": 200},
                        "topics": {"type": "array", "items": {"type": "string"}},
                        "ttl": {"oneOf": [{"type": "string"}, {"type": "number"}]}}}}}},
                "responses": _ok("the token", {"type": "object", "properties": {
                    "token": {"type": "string"}, "channel": {"type": "string"},
                    "expires_at": {"type": "string"}}})}},
            "/v1/streams/{channel}": {"get": {
                "summary": "A durable stream as Server-Sent Events (`id:` the offset, `data:` "
                           "the item as JSON), from `from` (first offset wanted) or after the "
                           "`Last-Event-ID` header; never ends by itself. Needs `token` (from "
                           "/v1/stream-tokens) or the REST API's credentials",
                "x-stepwell": True, "security": [],
                "parameters": [_param("channel", "path"), _param("token"), _param("from"),
                               {"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the event stream",
                                      "content": {"text/event-stream": {"schema": {
                                          "type": "string"}}}},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            "/v1/functions/{function_id}/invoke": {"post": {
                "summary": "Start a run of a function now with {data} as its event's data (an "
                           "inngest/function.invoked event)", "x-stepwell": True,
                "parameters": [_param("function_id", "path")],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"data": {"type": "object"}}}}}},
                "responses": _ok("the new run", {"type": "object", "properties": {
                    "run_id": {"type": "string"}, "event_id": {"type": "string"}}})}},
            "/v1/functions/{function_id}/pending": {"get": {
                "summary": "What flow control holds back for a function: its batch and "
                           "debounce windows that have not fired (events with no run yet), in "
                           "key order", "x-stepwell": True,
                "parameters": [_param("function_id", "path"), {
                    "name": "limit", "in": "query", "required": False,
                    "description": "at most this many windows (1 to 1000; default 100)",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": _ok("the windows", {"type": "array", "items": {
                    "type": "object", "properties": {
                        "kind": {"enum": ["batch", "debounce"]},
                        "key": {"type": "string", "description": "the evaluated key "
                                "(empty for an option without one)"},
                        "fires_at": {"type": ["string", "null"], "description":
                                     "when the run starts (a batch: sooner if it fills)"},
                        "created_at": {"type": ["string", "null"],
                                       "description": "when the window's first event came"},
                        "events": {"type": "integer", "description": "events held"},
                        "event_id": {"type": ["string", "null"], "description":
                                     "the event a debounce will run with; a batch's oldest"}}}})}},
            "/v1/functions": {"get": {
                "summary": "Registered functions with their triggers, retries and flow-control "
                           "settings (`config`)", "x-stepwell": True,
                "responses": _ok("functions")}},
            "/fn/register": {"post": {
                "summary": "Register (sync) an app served by an official Inngest SDK",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["url", "functions"], "properties": {
                        "appName": {"type": "string"}, "url": {"type": "string"},
                        "functions": {"type": "array", "items": {"type": "object"}}}}}}},
                "responses": {"200": {"description": '{"ok": true, "modified": bool, ...}'},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            "/v1/apps": {"get": {"summary": "Synced SDK apps, and apps whose last sync was "
                                            "refused (`error` names the function and why)",
                                 "x-stepwell": True,
                                 "responses": _ok("apps")}},
            "/v1/apps/sync": {"post": {
                "summary": "Ask the SDK app at `url` to register (as `inngest dev -u`)",
                "x-stepwell": True,
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["url"],
                    "properties": {"url": {"type": "string"}}}}}},
                "responses": _ok("the app and its functions")}},
            "/v0/runs/{run_id}/batch": {"get": {
                "summary": "A run's events, for SDK calls sent with use_api",
                "parameters": [_param("run_id", "path")],
                "responses": {"200": {"description": "[event, ...]"},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            "/v0/runs/{run_id}/actions": {"get": {
                "summary": "A run's resolved step results, for SDK calls sent with use_api",
                "parameters": [_param("run_id", "path")],
                "responses": {"200": {"description": "{step hash: memo}"},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            "/v1/checkpoint/{run_id}/async": {"post": {
                "summary": "TypeScript SDK checkpointing: commit the results of steps the SDK "
                           "ran inside one call, under the calling worker's lease (409 once "
                           "that call no longer holds the run)",
                "parameters": [_param("run_id", "path")],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["fnId", "qiId", "steps"],
                    "properties": {"fnId": {"type": "string"}, "qiId": {"type": "string"},
                                   "steps": {"type": "array"}}}}}},
                "responses": {"200": {"description": "committed"},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            **{path: {"post": {
                "summary": "Durable endpoints' synchronous checkpoints: not supported (400, "
                           "naming the route)",
                "parameters": params,
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {}}}},
                "responses": {"400": {"$ref": "#/components/responses/Error"},
                              "default": {"$ref": "#/components/responses/Error"}}}}
               for path, params in (("/v1/checkpoint", []),
                                    ("/v1/checkpoint/{run_id}/steps",
                                     [_param("run_id", "path")]))},
            "/v1/runs/{run_id}/metadata": {"post": {
                "summary": "step.metadata aimed at another run: not supported (400)",
                "parameters": [_param("run_id", "path")],
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {}}}},
                "responses": {"400": {"$ref": "#/components/responses/Error"},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            **{path: {"post": {
                "summary": "Inngest's REST v2 rerun: a new run of the run's function with the "
                           "same events; with fromStep, from that step on (its input edited "
                           "for TypeScript SDK functions)",
                "parameters": [_param("run_id", "path")],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"fromStep": {
                        "type": "object", "required": ["stepId"],
                        "properties": {"stepId": {"type": "string", "minLength": 1},
                                       "input": {}}}}}}}},
                "responses": _ok("the new run's id", {
                    "type": "object", "properties": {"runId": {"type": "string"}}})}}
               for path in ("/v2/runs/{run_id}/rerun", "/api/v2/runs/{run_id}/rerun")},
            "/dev": {"get": {"summary": "Server mode, apps, and every function's registered "
                                        "config (as Go's dev server lists it: slug, triggers, "
                                        "steps with their URI and retries)", "x-stepwell": True,
                             "responses": {"200": {"description": "info"}}}},
            "/health": {"get": {"summary": "Liveness", "x-stepwell": True,
                                "responses": {"200": {"description": "OK"}}}},
            "/openapi.json": {"get": {"summary": "This document", "x-stepwell": True,
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: this process's counters (events, runs by final "
                           "status, steps by kind, failed attempts) and the queue's state "
                           "(ready items, lag of the oldest, parked and active runs)",
                "x-stepwell": True,
                "responses": {"200": {"description": "Prometheus text format", "content": {
                    "text/plain": {"schema": {"type": "string"}}}},
                              "default": {"$ref": "#/components/responses/Error"}}}},
            **_dashboard_paths(),
        }),
        "components": {
            "schemas": {
                "Envelope": {"type": "object", "properties": {
                    "data": {}, "metadata": {"type": "object", "properties": {
                        "fetched_at": {"type": "string"}, "cached_until": {"type": "string"}}}}},
                "EventIn": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "data": {"type": "object"},
                    "id": {"type": "string"}, "ts": {"type": "integer"},
                    "user": {"type": "object"}, "v": {"type": "string"}}},
                "Event": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "data": {"type": "object"}, "user": {"type": "object"},
                    "ts": {"type": "integer"}, "receivedAt": {"type": ["string", "null"]}}},
                "Run": {"type": "object", "properties": {
                    "run_id": {"type": "string"}, "run_started_at": {"type": "string"},
                    "ended_at": {"type": ["string", "null"]},
                    "status": {"enum": ["Queued", "Running", "Completed", "Failed",
                                        "Cancelled", "Skipped"]},
                    "output": {}, "event_id": {"type": ["string", "null"]},
                    "event_name": {"type": ["string", "null"]},
                    "function_id": {"type": "string"}, "error": {}, "steps": {"type": "array"},
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "replay_of": {"type": ["string", "null"]},
                    "state": {"type": "object", "description": "what the run is doing: `kind` "
                              "(sleeping, waiting_for_event, waiting_for_signal, "
                              "waiting_for_run, retrying, throttled, concurrency_limited, "
                              "orphaned, scheduled, queued, running, or the ended status), "
                              "`summary`, and the fields of its kind"},
                    "version": {"type": ["string", "null"],
                                "description": "the version of the function's code the run "
                                               "started on"},
                    "usage": {"type": "object", "description": "tokens the run's steps spent "
                              "on models (`GET /v1/runs/{run_id}` only): `input_tokens`, "
                              "`output_tokens`, `requests`, and `models` (the same per model, "
                              "most tokens first); failed attempts count"}}},
            },
            "securitySchemes": {"signingKey": {
                "type": "http", "scheme": "bearer",
                "description": "Production mode only: the server's signing key "
                               "(signkey-<env>-<hex>, the hex part alone, or its SHA-256)"}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "error": {"type": "string"}, "status": {"type": "integer"}}}}}}},
        },
    }
