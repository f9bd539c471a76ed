"""`stepwell functions pending`: the CLI's side of the function page's "Held back by flow
control" (`GET /v1/functions/{id}/pending`), against a real `stepwell dev` subprocess started
with test_cli.py's helpers, with windows long enough (1 hour) not to fire during the test."""
from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_cli import DevServer, cli, start_dev, wait_for

APP_SOURCE = textwrap.dedent("""
    import stepwell

    app = stepwell.App("demo")

    @app.function(id="digest", trigger="demo/note",
                  debounce={"period": "1h", "key": "event.data.user"})
    async def digest(ctx, step):
        return None

    @app.function(id="bundle", trigger="demo/item", batch={"max_size": 50, "timeout": "1h"})
    async def bundle(ctx, step):
        return None
""")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    cwd = tmp_path_factory.mktemp("pending")
    (cwd / "held_app.py").write_text(APP_SOURCE)
    server = start_dev("held_app.py", cwd)
    try:
        yield server
    finally:
        server.stop()


def rest(url: str, function_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/v1/functions/{function_id}/pending", timeout=10)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


def test_functions_pending_says_what_the_rest_api_says(dev: DevServer) -> None:
    ada = cli("send", "demo/note", "--data", '{"user": "ada"}', url=dev.url).stdout.strip()
    for _ in range(3):
        cli("send", "demo/item", url=dev.url)
    wait_for(lambda: len(rest(dev.url, "demo/bundle")) == 1
             and rest(dev.url, "demo/bundle")[0]["events"] == 3, "the batch to hold 3 events")
    for function_id in ("demo/digest", "demo/bundle"):
        shown = cli("functions", "pending", function_id, "--json", url=dev.url)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == rest(dev.url, function_id)
    [window] = rest(dev.url, "demo/digest")
    assert (window["key"], window["events"], window["event_id"]) == ("ada", 1, ada)

    table = cli("functions", "pending", "digest", url=dev.url).stdout.splitlines()
    assert table[0].split() == ["KIND", "KEY", "EVENTS", "FIRES", "AT", "OPENED", "EVENT"]
    assert table[1].split()[:3] == ["debounce", "ada", "1"] and table[1].endswith(ada)
    bundle = cli("functions", "pending", "demo/bundle", url=dev.url).stdout.splitlines()
    assert bundle[1].split()[:4] == ["batch", "(no", "key)", "3"]


def test_functions_pending_refuses_bad_input(dev: DevServer) -> None:
    unknown = cli("functions", "pending", "demo/nope", url=dev.url)
    assert unknown.returncode == 1 and "no function 'demo/nope'" in unknown.stderr
    assert "(HTTP 404)" in unknown.stderr
    for limit, words in (("0", "1<=x<=1000"), ("1001", "1<=x<=1000"),
                         ("many", "not a valid integer")):
        bad = cli("functions", "pending", "demo/digest", "--limit", limit, url=dev.url)
        assert bad.returncode == 2 and words in bad.stderr and "'--limit'" in bad.stderr, \
            bad.stderr
