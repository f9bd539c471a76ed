"""`stepwell check` (the deploy check) and `stepwell runs export` (a run's history as a file).

`check` imports the app and replays recorded runs against it in this process; `runs export`
is a thin HTTP client of a running server like the other `runs` commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from stepwell.cli_client import call, json_option, table, url_option
from stepwell.core.urls import DEFAULT_DB


@click.command("export")
@click.argument("run_id")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, writable=True),
              help="Write the history to this file (default: RUN_ID.json; '-' for stdout).")
@url_option
def runs_export(run_id: str, output: str | None, url: str) -> None:
    """Write a run's recorded history (events, step results, failures, timings) to a file.

    Replay it locally with `stepwell.testing.replay(path, app)`, or check a new version of
    the code against a folder of them with `stepwell check APP --histories DIR`."""
    history = call("GET", url, f"/v1/runs/{run_id}/history")
    text = json.dumps(history, indent=1, sort_keys=True) + "\n"
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output or f"{run_id}.json")
    path.write_text(text, encoding="utf-8")
    click.echo(f"wrote {path} ({len(history.get('steps', []))} steps)", err=True)


@click.command("check")
@click.argument("target", metavar="PATH_OR_MODULE[:ATTR]")
@click.option("--db", default=None, envvar="STEPWELL_DB",
              help=f"Check the runs in this database (env STEPWELL_DB; default {DEFAULT_DB}).")
@click.option("--histories", type=click.Path(exists=True, file_okay=False),
              help="Check the exported histories (*.json) in this folder instead of a "
                   "database (`stepwell runs export`), e.g. in CI.")
@click.option("--sample", default=100, show_default=True, type=click.IntRange(min=0),
              help="Also replay up to this many of each function's newest finished runs "
                   "(reported, not failing the check).")
@json_option
def check(target: str, db: str | None, histories: str | None, sample: int,
          as_json: bool) -> None:
    """Before a deploy: replay recorded runs against the code in TARGET, with no side effects.

    Every unfinished run (and a sample of finished ones) is replayed from its recorded step
    results, no step body called; the report lists per function how many replay cleanly and
    each divergence (a changed step kind or arguments, a reordered, inserted or removed step)
    with the fix. Exits 1 if an unfinished run would diverge or its function is gone."""
    from stepwell import service_deploy
    from stepwell.cli import load_apps

    if db is not None and histories is not None:
        raise click.UsageError("give --db or --histories, not both")
    apps = load_apps(target)
    try:
        if histories is not None:
            report = asyncio.run(service_deploy.check_histories(
                apps, service_deploy.read_folder(histories)))
        else:
            report = asyncio.run(service_deploy.check_database(apps, db or DEFAULT_DB,
                                                               sample=sample))
    except service_deploy.HistoryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else report.text())
    if not report.ok:
        sys.exit(1)


@click.command("versions")
@url_option
@json_option
def versions(url: str, as_json: bool) -> None:
    """Per function and version: the unfinished runs (how many, the oldest) and the live
    workers serving it (how many, the latest heartbeat). STATE: current (the server's code),
    draining (older, its workers finish its runs), stranded (runs but no live worker: pinned
    runs wait for one; upgrade="auto" runs move once a newer worker's replay check passes),
    drained (no unfinished run: its workers can be stopped)."""
    found = call("GET", url, "/v1/versions")["data"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = []
    for fn in found:
        current = fn["current"] or "-"
        if not fn["versions"]:
            rows.append([fn["function_id"], current, "-", "0", "-", "0", "-"])
        for v in fn["versions"]:
            state = v["state"] if fn["defined"] else f"{v['state']} (no such function here)"
            beats = [w["heartbeat_at"] for w in v["workers"]]
            rows.append([fn["function_id"], str(v["version"] or "-"), state, str(v["runs"]),
                         v["oldest"] or "-", str(len(beats)), max(beats) if beats else "-"])
    if not rows:
        click.echo("no functions")
        return
    click.echo(table(["FUNCTION", "VERSION", "STATE", "UNFINISHED", "OLDEST", "WORKERS",
                      "LAST HEARTBEAT"], rows))
