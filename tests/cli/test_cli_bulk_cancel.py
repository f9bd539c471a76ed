"""`stepwell runs cancel --function F --query Q --status S`: bulk cancel by filter, with a
confirmation (or --yes) and a count, against a real `stepwell dev` subprocess."""
from __future__ import annotations

import json
import subprocess
import uuid

from test_cli import DEADLINE_S, DevServer, clean_env, cli, dev, runs_json, stepwell_cmd, wait_for

__all__ = ["dev"]  # the module-scoped dev server fixture, shared with test_cli.py


def test_bulk_cancel_by_query_and_state_asks_first_and_cancels_only_the_matches(
        dev: DevServer) -> None:
    tag = uuid.uuid4().hex
    sent = [cli("send", "demo/slow", "--data", json.dumps({"tag": tag, "keep": n == 2}),
                url=dev.url).stdout.strip() for n in range(3)]
    mine = f'data.tag == "{tag}"'
    wait_for(lambda: len(runs_json(dev.url, "--status", "sleeping", "--query", mine)) == 3,
             "three sleeping runs")
    args = ["runs", "cancel", "--function", "slow", "--query", f"{mine} && !data.keep",
            "--status", "sleeping", "--url", dev.url]

    declined = subprocess.run(stepwell_cmd(*args), input="n\n", capture_output=True, text=True,
                              timeout=DEADLINE_S, env=clean_env())
    assert declined.returncode == 1 and "Cancel 2 run(s) of demo/slow" in declined.stderr
    assert "matching" in declined.stderr and "(sleeping)" in declined.stderr
    assert len(runs_json(dev.url, "--status", "sleeping", "--query", mine)) == 3

    done = cli(*args[:-2], "--yes", url=dev.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cancelled 2 run(s) of demo/slow"
    left = runs_json(dev.url, "--query", mine, "--status", "sleeping")
    assert [r["event_id"] for r in left] == [sent[2]]
    cancelled = runs_json(dev.url, "--query", mine, "--status", "cancelled")
    assert {r["event_id"] for r in cancelled} == {sent[0], sent[1]}

    bad = cli("runs", "cancel", "--function", "slow", "--status", "completed", url=dev.url)
    assert bad.returncode == 2 and "not an active state" in bad.stderr
    alone = cli("runs", "cancel", sent[2], "--query", mine, url=dev.url)
    assert alone.returncode == 2 and "go with --function" in alone.stderr
    cli("runs", "cancel", "--function", "slow", "--query", mine, "--yes", url=dev.url)
