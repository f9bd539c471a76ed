"""`stepwell send` and `stepwell runs ...`: thin HTTP clients of a running stepwell server.

They talk to the REST API only (never the database), so they work against any server: `stepwell
dev` on this machine or a production server (`--url`, env STEPWELL_URL; a server in production
mode also wants INNGEST_SIGNING_KEY).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8288"
F = TypeVar("F", bound=Callable[..., Any])


def url_option(fn: F) -> F:
    return click.option("--url", envvar="STEPWELL_URL", default=DEFAULT_URL, show_default=True,
                        help="The stepwell server (env STEPWELL_URL).")(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def call(method: str, base: str, path: str, *, body: Any = None,
         params: dict[str, Any] | None = None) -> Any:
    """One request; unreachable servers and error replies become one-line CLI errors."""
    base = base.rstrip("/")
    query = {k: v for k, v in (params or {}).items() if v is not None}
    # A server in production mode wants its signing key on REST calls.
    key = os.environ.get("INNGEST_SIGNING_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.request(method, base + path, json=body, params=query, headers=headers,
                              timeout=30)
    except httpx.TransportError as exc:
        raise click.ClickException(
            f"cannot reach stepwell at {base}: is `stepwell dev` running?") from exc
    try:
        payload = reply.json()
    except ValueError:
        payload = None
    if reply.is_error:
        detail = payload.get("error") if isinstance(payload, dict) else None
        raise click.ClickException(f"{detail or reply.text or reply.reason_phrase} "
                                   f"(HTTP {reply.status_code})")
    return payload


def parse_data(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {value}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"must be a JSON object such as '{{\"id\": 1}}', "
                                 f"got {type(data).__name__}")
    return data


@click.command()
@click.argument("name")
@click.option("--data", default="{}", callback=parse_data, metavar="JSON",
              help="The event's data, a JSON object.")
@click.option("--id", "event_id", default=None, help="Event id (for de-duplication).")
@url_option
@json_option
def send(name: str, data: dict[str, Any], event_id: str | None, url: str,
         as_json: bool) -> None:
    """Send an event; prints its id."""
    event: dict[str, Any] = {"name": name, "data": data}
    if event_id:
        event["id"] = event_id
    reply = call("POST", url, "/e/dev", body=event)
    click.echo(json.dumps(reply) if as_json else reply["ids"][0])


@click.group()
def runs() -> None:
    """List, show, cancel and replay runs."""


def short_time(value: str | None) -> str:
    return value.replace("T", " ").removesuffix("Z")[:19] if value else "-"


def duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "-"
    delta = (datetime.datetime.fromisoformat(end.replace("Z", "+00:00"))
             - datetime.datetime.fromisoformat(start.replace("Z", "+00:00")))
    ms = int(delta.total_seconds() * 1000)
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Plain aligned columns (no dependency on a rich-text library)."""
    body = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in body)


def compact(value: Any, width: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


@runs.command("list")
@click.option("--function", "function_id", default=None, help="Function id (fn or app/fn).")
@click.option("--status", default=None, help="queued, running, completed, failed, cancelled, "
                                             "skipped.")
@click.option("--event", "event_id", default=None, help="Runs started by this event id.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@url_option
@json_option
def runs_list(function_id: str | None, status: str | None, event_id: str | None, limit: int,
              url: str, as_json: bool) -> None:
    """Runs, newest first."""
    reply = call("GET", url, "/v1/runs", params={"function_id": function_id, "status": status,
                                                 "event_id": event_id, "limit": limit})
    found = reply["data"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no runs")
        return
    click.echo(table(
        ["RUN ID", "FUNCTION", "STATUS", "STARTED", "DURATION", "EVENT"],
        [[r["run_id"], r["function_id"], r["status"], short_time(r["run_started_at"]),
          duration(r["run_started_at"], r["ended_at"]), r["event_id"] or "-"] for r in found]))


def error_line(error: dict[str, Any]) -> str:
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


def step_detail(step: dict[str, Any]) -> str:
    if step.get("error"):
        return error_line(step["error"])
    return "-" if step["output"] is None else compact(step["output"])


def show_run(run: dict[str, Any]) -> str:
    fields = [("run", run["run_id"]), ("function", run["function_id"]),
              ("status", run["status"]), ("event", run["event_id"] or "-"),
              ("queued", short_time(run["run_started_at"])),
              ("started", short_time(run.get("started_at"))),
              ("ended", short_time(run["ended_at"])),
              ("duration", duration(run["run_started_at"], run["ended_at"]))]
    if run.get("parent_run_id"):
        fields.append(("parent", run["parent_run_id"]))
    if run["status"] == "Completed":
        fields.append(("output", json.dumps(run["output"], default=str)))
    error = run.get("error")
    if error:
        fields.append(("error", error_line(error)))
    lines = [f"{key:<9} {value}" for key, value in fields]
    lines += [f"warning   {w}" for w in run.get("warnings", [])]
    steps = run.get("steps") or []
    lines.append("")
    if not steps:
        lines.append("no steps")
    else:
        lines.append(table(
            ["STEP", "KIND", "STATUS", "ATTEMPTS", "DURATION", "OUTPUT / ERROR"],
            [[s["id"], s["kind"], s["status"], str(s["attempts"]),
              duration(s["started_at"], s["ended_at"]), step_detail(s)] for s in steps]))
    return "\n".join(lines)


@runs.command("show")
@click.argument("run_id")
@url_option
@json_option
def runs_show(run_id: str, url: str, as_json: bool) -> None:
    """A run: status, output or error, and its step timeline."""
    run = call("GET", url, f"/v1/runs/{run_id}")["data"]
    click.echo(json.dumps(run, indent=2) if as_json else show_run(run))


@runs.command("cancel")
@click.argument("run_id")
@url_option
@json_option
def runs_cancel(run_id: str, url: str, as_json: bool) -> None:
    """Cancel a queued or running run (it stops at its next step boundary)."""
    run = call("POST", url, f"/v1/runs/{run_id}/cancel")["data"]
    if as_json:
        click.echo(json.dumps(run, indent=2))
    elif run["status"] == "Cancelled":
        click.echo(f"cancelled run {run_id}")
    else:
        click.echo(f"cancellation requested: run {run_id} is {run['status']} and stops at its "
                   "next step")


@runs.command("replay")
@click.argument("run_id")
@click.option("--from-step", default=None, metavar="STEP_ID",
              help="Reuse the results of the steps recorded before this step; run from it on.")
@url_option
@json_option
def runs_replay(run_id: str, from_step: str | None, url: str, as_json: bool) -> None:
    """Run a run's function again with the same events, as a new run."""
    body = {"from_step": from_step} if from_step else None
    run = call("POST", url, f"/v1/runs/{run_id}/replay", body=body)["data"]
    if as_json:
        click.echo(json.dumps(run, indent=2))
    else:
        where = f" from step {from_step!r}" if from_step else ""
        click.echo(f"replaying run {run_id}{where} as run {run['run_id']} ({run['status']})")
