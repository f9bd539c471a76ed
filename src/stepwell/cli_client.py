"""`stepwell send` and `stepwell runs ...`: thin HTTP clients of a running stepwell server.

They talk to the REST API only (never the database), so they work against any server: `stepwell
dev` on this machine or a production server (`--url`, env STEPWELL_URL; a server in production
mode also wants INNGEST_SIGNING_KEY).
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

DEFAULT_URL = "http://127.0.0.1:8288"
F = TypeVar("F", bound=Callable[..., Any])


def url_option(fn: F) -> F:
    return click.option("--url", envvar="STEPWELL_URL", default=DEFAULT_URL, show_default=True,
                        help="The stepwell server (env STEPWELL_URL).")(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def call(method: str, base: str, path: str, *, body: Any = None,
         params: dict[str, Any] | None = None) -> Any:
    """One request; unreachable servers and error replies become one-line CLI errors.

    The standard library's client, not httpx: importing httpx (and what it pulls in) costs more
    than the whole command should take."""
    base = base.rstrip("/")
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
    headers = {"Accept": "application/json"}
    # A server in production mode wants its signing key on REST calls.
    key = os.environ.get("INNGEST_SIGNING_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path + (f"?{query}" if query else ""), data=data,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, reason, text = reply.status, reply.reason, reply.read()
    except urllib.error.HTTPError as exc:
        status, reason, text = exc.code, exc.reason, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise click.ClickException(
            f"cannot reach stepwell at {base}: is `stepwell dev` running?") from exc
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if status >= 400:
        detail = payload.get("error") if isinstance(payload, dict) else None
        raise click.ClickException(f"{detail or text.decode(errors='replace') or reason} "
                                   f"(HTTP {status})")
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
    """Send an event; prints its id.

    With `--id`, an id the server already received (in the last 24 hours) is not stored again
    and starts no run: that is reported on stderr, so a retried send is not mistaken for a new
    one."""
    event: dict[str, Any] = {"name": name, "data": data}
    seen_before = None
    if event_id:
        event["id"] = event_id
        seen_before = find_event(url, event_id)
    reply = call("POST", url, "/e/dev", body=event)
    click.echo(json.dumps(reply) if as_json else reply["ids"][0])
    if seen_before is not None:
        click.echo(f"duplicate: event {event_id} was already received at "
                   f"{short_time(seen_before.get('receivedAt'))}; not stored again and no run "
                   "started (ids are de-duplicated for 24 hours)", err=True)


def find_event(url: str, event_id: str) -> dict[str, Any] | None:
    """The stored event with this id, or None."""
    try:
        path = f"/v1/events/{urllib.parse.quote(event_id, safe='')}"
        found: dict[str, Any] = call("GET", url, path)["data"]
    except click.ClickException as exc:
        if "(HTTP 404)" in exc.message:
            return None
        raise
    return found


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
@click.option("--status", default=None,
              help="queued, running, completed, failed, cancelled, skipped (several: "
                   "queued,running); or what an active run is doing: sleeping, waiting, "
                   "invoking, retrying, orphaned.")
@click.option("--event", "event_id", default=None, help="Runs started by this event id.")
@click.option("--run", "run_id", default=None, help="The run with this id.")
@click.option("--since", default=None,
              help="Runs queued at or after this time (ISO 8601, or a duration ago: 30m, 2h).")
@click.option("--until", default=None, help="Runs queued before this time (as --since).")
@click.option("--query", default=None,
              help="A CEL condition on the triggering event, e.g. 'data.userId == 42' "
                   "or 'event.data.plan == \"pro\"'.")
@click.option("--cursor", default=None, help="The next page: the cursor the last page printed.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@url_option
@json_option
def runs_list(function_id: str | None, status: str | None, event_id: str | None,
              run_id: str | None, since: str | None, until: str | None, query: str | None,
              cursor: str | None, limit: int, url: str, as_json: bool) -> None:
    """Runs, newest first, with what each active run is doing."""
    now = datetime.datetime.now(datetime.UTC)
    times = {name: parse_since(value, now, name).isoformat().replace("+00:00", "Z")
             for name, value in (("since", since), ("until", until)) if value}
    reply = call("GET", url, "/v1/runs", params={
        "function_id": function_id, "status": status, "event_id": event_id, "run_id": run_id,
        "query": query, "cursor": cursor, "limit": limit, **times})
    found = reply["data"]
    following = (reply.get("metadata") or {}).get("next_cursor")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        if following:
            click.echo(f"next page: --cursor {following}", err=True)
        return
    if not found:
        if function_id:
            check_function(url, function_id)
        click.echo("no runs")
        return
    click.echo(table(
        ["RUN ID", "FUNCTION", "STATUS", "STARTED", "DURATION", "EVENT", "DOING"],
        [[r["run_id"], r["function_id"], shown_status(r), short_time(r["run_started_at"]),
          duration(r["run_started_at"], r["ended_at"]), r["event_id"] or "-", doing(r)]
         for r in found]))
    if following:
        click.echo(f"\nnext page: stepwell runs list ... --cursor {following}")


def doing(run: dict[str, Any]) -> str:
    """What an active run is doing, in the server's words (`-` once it ended)."""
    state = run.get("state") or {}
    if run["status"] not in ("Queued", "Running") or not state:
        return "-"
    return str(state.get("summary") or state.get("kind") or "-")


def shown_status(run: dict[str, Any]) -> str:
    """`Running (sleeping)` when the server says what a running run is doing."""
    doing = run.get("activity")
    return f"{run['status']} ({doing})" if doing else str(run["status"])


def check_function(url: str, function_id: str) -> str:
    """The function's full id (`app/fn`) for `fn` or `app/fn`; an unknown one is an error that
    lists the known ones (a typo must not read as "no runs")."""
    known = [str(f["id"]) for f in call("GET", url, "/v1/functions")["data"]]
    matches = [f for f in known if f == function_id or f.split("/", 1)[-1] == function_id]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise click.ClickException(f"{function_id!r} is ambiguous: {', '.join(matches)}; "
                                   "give app/function")
    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "") if known else "none"
    raise click.ClickException(f"no such function {function_id!r}; known functions: {shown}")


def error_line(error: dict[str, Any]) -> str:
    return f"{error.get('name', 'Error')}: {error.get('message', '')}"


def step_detail(step: dict[str, Any]) -> str:
    if step.get("error"):
        return error_line(step["error"])
    return "-" if step["output"] is None else compact(step["output"])


def show_run(run: dict[str, Any]) -> str:
    fields = [("run", run["run_id"]), ("function", run["function_id"]),
              ("status", shown_status(run)), ("event", run["event_id"] or "-"),
              ("queued", short_time(run["run_started_at"])),
              ("started", short_time(run.get("started_at"))),
              ("ended", short_time(run["ended_at"])),
              ("duration", duration(run["run_started_at"], run["ended_at"]))]
    if doing(run) != "-":
        fields.insert(3, ("doing", doing(run)))
    if run.get("parent_run_id"):
        fields.append(("parent", run["parent_run_id"]))
    if run.get("version"):
        fields.append(("version", run["version"]))
    if run["status"] == "Completed":
        fields.append(("output", json.dumps(run["output"], default=str)))
    error = run.get("error")
    if error:
        fields.append(("error", error_line(error)))
    usage = run.get("usage") or {}
    if usage.get("requests"):
        models = ", ".join(f"{m['model']} {m['input_tokens']}/{m['output_tokens']}"
                           for m in usage["models"])
        fields.append(("tokens", f"{usage['input_tokens']} in, {usage['output_tokens']} out, "
                                 f"{usage['requests']} model requests ({models})"))
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
@click.argument("run_id", required=False)
@click.option("--function", "function_id", default=None, metavar="FUNCTION",
              help="Cancel every queued or running run of this function (fn or app/fn).")
@click.option("--since", default=None, metavar="TIME|DURATION",
              help="With --function: only runs queued at or after this time (ISO 8601, or a "
                   "duration ago such as 2h).")
@click.option("--query", default=None,
              help="With --function: only runs whose triggering event matches this CEL "
                   "condition (as in runs list: 'data.userId == 42').")
@click.option("--status", default=None,
              help="With --function: only runs in these active states, comma-separated "
                   "(queued, running, sleeping, waiting, invoking, retrying, orphaned).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@url_option
@json_option
def runs_cancel(run_id: str | None, function_id: str | None, since: str | None,
                query: str | None, status: str | None, yes: bool, url: str,
                as_json: bool) -> None:
    """Cancel a queued or running run (it stops at its next step boundary), or with
    --function every active run of a function."""
    if (run_id is None) == (function_id is None):
        raise click.UsageError("give a RUN_ID or --function FUNCTION (not both)")
    if function_id is not None:
        bulk_cancel(url, function_id, since, yes=yes, as_json=as_json,
                    match=RunMatch(query, active_statuses(status)))
        return
    if since is not None or query is not None or status is not None:
        raise click.UsageError("--since, --query and --status go with --function")
    assert run_id is not None
    run = call("POST", url, f"/v1/runs/{run_id}/cancel")["data"]
    if as_json:
        click.echo(json.dumps(run, indent=2))
    elif run["status"] == "Cancelled":
        click.echo(f"cancelled run {run_id}")
    else:
        click.echo(f"cancellation requested: run {run_id} is {run['status']} and stops at its "
                   "next step")


def parse_since(value: str, now: datetime.datetime, option: str = "since"
                ) -> datetime.datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration before `now` (`90m`)."""
    text = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return now - datetime.timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO 8601 time "
                                 "(2026-12-01T09:00:00Z) nor a duration such as 30m, 2h or 1d",
                                 param_hint=f"--{option}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def parse_iso(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


ACTIVE_FILTERS = ("queued", "running", "sleeping", "waiting", "invoking", "retrying", "orphaned")


@dataclasses.dataclass(frozen=True)
class RunMatch:
    """What a bulk cancel selects beyond the function: an event query and active states."""
    query: str | None = None
    statuses: tuple[str, ...] = ("queued", "running")


def active_statuses(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ("queued", "running")
    names = tuple(dict.fromkeys(v.strip().lower() for v in value.split(",") if v.strip()))
    wrong = [n for n in names if n not in ACTIVE_FILTERS]
    if wrong or not names:
        raise click.BadParameter(f"{(wrong or [value])[0]!r} is not an active state; use "
                                 f"{', '.join(ACTIVE_FILTERS)}", param_hint="--status")
    return names


def active_runs(url: str, function_id: str, since: datetime.datetime | None,
                match: RunMatch = RunMatch()) -> list[dict[str, Any]]:
    """The active runs of a function (oldest first) in `match`'s states and matching its
    query, queued at or after `since`."""
    found: dict[str, dict[str, Any]] = {}
    for status in match.statuses:
        for run in call("GET", url, "/v1/runs", params={
                "function_id": function_id, "status": status, "query": match.query,
                "limit": 1000})["data"]:
            if since is None or parse_iso(run["run_started_at"]) >= since:
                found[run["run_id"]] = run
    return sorted(found.values(), key=lambda r: str(r["run_started_at"]))


def bulk_cancel(url: str, function_id: str, since: str | None, *, yes: bool,
                as_json: bool, match: RunMatch = RunMatch()) -> None:
    """Cancel the function's active runs one by one, with a confirmation and a progress bar;
    repeats while new pages of active runs appear (the listing is capped per call)."""
    cutoff = parse_since(since, datetime.datetime.now(datetime.UTC)) if since else None
    unknown: click.ClickException | None = None
    try:
        qualified = check_function(url, function_id)
    except click.ClickException as exc:
        # A function no longer defined (renamed or deleted) can still have orphaned runs.
        qualified, unknown = function_id, exc
    todo = active_runs(url, qualified, cutoff, match)
    if unknown is not None:
        if not todo:
            raise unknown
        click.echo(f"{qualified} is not defined by the server: these runs are orphaned",
                   err=True)
    window = f" queued since {cutoff.isoformat(timespec='seconds')}" if cutoff else ""
    window += f" matching {match.query!r}" if match.query else ""
    if match.statuses != ("queued", "running"):
        window += f" ({', '.join(match.statuses)})"
    if not todo:
        click.echo(json.dumps({"cancelled": [], "ended": []}) if as_json else
                   f"no queued or running runs of {qualified}{window}")
        return
    more = "+" if len(todo) >= 1000 else ""
    if not yes and not click.confirm(f"Cancel {len(todo)}{more} run(s) of {qualified}{window}?",
                                     err=True):
        raise click.Abort()
    cancelled: list[str] = []
    ended: list[str] = []
    seen: set[str] = set()
    while todo:
        bar: Any = click.progressbar(todo, label="cancelling", show_pos=True,
                                     file=sys.stderr)
        with bar:
            for run in bar:
                seen.add(run["run_id"])
                try:
                    call("POST", url, f"/v1/runs/{run['run_id']}/cancel")
                except click.ClickException as exc:
                    if "(HTTP 409)" not in exc.message:     # it ended meanwhile: fine
                        raise
                    ended.append(run["run_id"])
                else:
                    cancelled.append(run["run_id"])
        todo = [r for r in active_runs(url, qualified, cutoff, match)
                if r["run_id"] not in seen]
    if as_json:
        click.echo(json.dumps({"cancelled": cancelled, "ended": ended}))
        return
    note = f" ({len(ended)} had already ended)" if ended else ""
    click.echo(f"cancelled {len(cancelled)} run(s) of {qualified}{note}")


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


def parse_input(ctx: click.Context, param: click.Parameter, value: str | None
                ) -> list[Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}): {value}") from exc
    if not isinstance(data, list):
        raise click.BadParameter("must be a JSON array of the step's arguments such as "
                                 f"'[{{\"id\": 1}}]', got {type(data).__name__}")
    return data


@runs.command("rerun")
@click.argument("run_id")
@click.option("--from-step", default=None, metavar="STEP_ID",
              help="Reuse the results of the steps recorded before this step; run from it on.")
@click.option("--input", "step_input", default=None, callback=parse_input, metavar="JSON",
              help="With --from-step: run that step with these arguments instead (a JSON "
                   "array; official-SDK functions whose steps take input).")
@url_option
@json_option
def runs_rerun(run_id: str, from_step: str | None, step_input: list[Any] | None, url: str,
               as_json: bool) -> None:
    """Rerun a run as a new run, optionally from a step with edited input (Inngest's REST v2
    `POST /v2/runs/{id}/rerun`, the dashboard's "Rerun from step")."""
    if step_input is not None and from_step is None:
        raise click.UsageError("--input edits a step's input: give the step with --from-step")
    body: dict[str, Any] = {}
    if from_step is not None:
        body["fromStep"] = {"stepId": from_step,
                            **({"input": step_input} if step_input is not None else {})}
    new_id = call("POST", url, f"/v2/runs/{run_id}/rerun", body=body)["data"]["runId"]
    if as_json:
        click.echo(json.dumps({"run_id": new_id}))
    else:
        where = f" from step {from_step!r}" if from_step else ""
        edited = " with edited input" if step_input is not None else ""
        click.echo(f"rerunning run {run_id}{where}{edited} as run {new_id}")


@runs.command("invoke")
@click.argument("function_id")
@click.option("--data", default="{}", callback=parse_data, metavar="JSON",
              help="The invoked run's event data, a JSON object.")
@url_option
@json_option
def runs_invoke(function_id: str, data: dict[str, Any], url: str, as_json: bool) -> None:
    """Start a run of a function now with --data as its event's data; prints the run's id
    (`POST /v1/functions/{id}/invoke`, the dashboard's "Invoke")."""
    reply = call("POST", url, f"/v1/functions/{function_id}/invoke", body={"data": data})
    click.echo(json.dumps(reply["data"]) if as_json else reply["data"]["run_id"])


@click.group()
def functions() -> None:
    """What functions are holding back."""


@functions.command("pending")
@click.argument("function_id")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@url_option
@json_option
def functions_pending(function_id: str, limit: int, url: str, as_json: bool) -> None:
    """The function's batch and debounce windows that have not fired yet: events flow control
    holds back, with no run yet (`GET /v1/functions/{id}/pending`, the function page's "Held
    back by flow control")."""
    path = f"/v1/functions/{urllib.parse.quote(function_id, safe='/')}/pending"
    found = call("GET", url, path, params={"limit": limit})["data"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("nothing held back")
        return
    click.echo(table(
        ["KIND", "KEY", "EVENTS", "FIRES AT", "OPENED", "EVENT"],
        [[w["kind"], w["key"] if w["key"] else "(no key)", str(w["events"]),
          short_time(w["fires_at"]), short_time(w["created_at"]), w["event_id"] or "-"]
         for w in found]))
