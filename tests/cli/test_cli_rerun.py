"""`stepwell runs rerun`: the CLI's side of the dashboard's "Rerun from step" (REST v2 rerun),
against the same real `stepwell dev` subprocess as test_cli.py."""
from __future__ import annotations

import json

from test_cli import DevServer, cli, dev, runs_json, wait_for

__all__ = ["dev"]  # the module-scoped dev server fixture, shared with test_cli.py


def completed(url: str, event_id: str, count: int) -> bool:
    found = runs_json(url, "--event", event_id)
    return len(found) == count and all(r["status"] == "Completed" for r in found)


def test_runs_rerun_from_the_start_and_from_a_step(dev: DevServer) -> None:
    event_id = cli("send", "demo/hello", "--data", '{"name": "ann"}', url=dev.url).stdout.strip()
    wait_for(lambda: completed(dev.url, event_id, 1), "the first run")
    [run] = runs_json(dev.url, "--event", event_id)

    again = cli("runs", "rerun", run["run_id"], url=dev.url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"rerunning run {run['run_id']} as run ")
    from_step = cli("runs", "rerun", run["run_id"], "--from-step", "pick-name", "--json",
                    url=dev.url)
    assert from_step.returncode == 0, from_step.stderr
    new_id = json.loads(from_step.stdout)["run_id"]
    wait_for(lambda: completed(dev.url, event_id, 3), "both reruns to complete")
    assert new_id in {r["run_id"] for r in runs_json(dev.url, "--event", event_id)}


def test_runs_rerun_input_is_checked_and_refused_where_it_cannot_apply(dev: DevServer) -> None:
    event_id = cli("send", "demo/hello", url=dev.url).stdout.strip()
    wait_for(lambda: completed(dev.url, event_id, 1), "the run")
    [run] = runs_json(dev.url, "--event", event_id)
    rid = run["run_id"]

    no_step = cli("runs", "rerun", rid, "--input", "[1]", url=dev.url)
    assert no_step.returncode == 2 and "--from-step" in no_step.stderr
    not_array = cli("runs", "rerun", rid, "--from-step", "pick-name", "--input", '{"a": 1}',
                    url=dev.url)
    assert not_array.returncode == 2 and "JSON array" in not_array.stderr
    # A native function's step takes no arguments: the server says so (HTTP 400).
    native = cli("runs", "rerun", rid, "--from-step", "pick-name", "--input", '["bob"]',
                 url=dev.url)
    assert native.returncode == 1 and "(HTTP 400)" in native.stderr, native.stderr
    assert "without 'input'" in native.stderr
    unknown = cli("runs", "rerun", rid, "--from-step", "nope", url=dev.url)
    assert unknown.returncode == 1 and "(HTTP 400)" in unknown.stderr
