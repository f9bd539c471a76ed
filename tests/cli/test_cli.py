"""The `stepwell` command line against a real `stepwell dev` subprocess.

The server listens on port 0 (the OS picks a free port, no race) and the tests read the URL from
its banner; every wait polls a condition against a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

DEADLINE_S = 30.0
APP_SOURCE = textwrap.dedent("""
    import stepwell

    app = stepwell.App("demo")

    @app.function(id="hello", trigger="demo/hello")
    async def hello(ctx, step):
        name = await step.run("pick-name", lambda: ctx.event.data.get("name", "world"))
        return {"greeting": f"hello {name}"}

    @app.function(id="slow", trigger="demo/slow")
    async def slow(ctx, step):
        await step.run("first", lambda: 1)
        await step.sleep("nap", "1h")
        return "woke"

    @app.function(id="nap", trigger="demo/nap")
    async def nap(ctx, step):
        await step.sleep("long-nap", "1d")
        return "rested"

    @app.function(id="boom", trigger="demo/boom", retries=0)
    async def boom(ctx, step):
        ctx.logger.info("about to explode")
        await step.run("explode", lambda: 1 / 0)

    other = stepwell.App("other")

    @other.function(id="noop", trigger="other/noop")
    def noop(ctx, step):
        return None

    just_other = [other]
""")


def stepwell_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepwell.cli", *args]


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("STEPWELL_URL", None)
    return env


def cli(*args: str, url: str | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    extra = ["--url", url] if url else []
    return subprocess.run(stepwell_cmd(*args, *extra), capture_output=True, text=True,
                          timeout=DEADLINE_S, env=clean_env(), cwd=cwd)


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll `condition` until it returns something truthy, failing after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class DevServer:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    url: str = ""
    reader: threading.Thread | None = None

    def output(self) -> str:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.seen)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if self.reader is not None:
                self.reader.join(timeout=DEADLINE_S)  # it ends at EOF, once the process exits
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def start_dev(target: str, cwd: Path, *extra: str) -> DevServer:
    proc = subprocess.Popen(
        stepwell_cmd("dev", target, "--port", "0", "--db", f"sqlite:///{cwd / 'sw.db'}",
                     *extra),
        cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = DevServer(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.put(line)

    server.reader = threading.Thread(target=pump, daemon=True)
    server.reader.start()

    def url_from_banner() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"stepwell dev exited {proc.returncode}:\n{server.output()}")
        for line in server.output().splitlines():
            if "running at " in line:
                return line.split("running at ")[1].split()[0]
        return None

    def healthy() -> bool:
        try:
            return httpx.get(server.url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        server.url = wait_for(url_from_banner, "the dev server banner")
        wait_for(healthy, "/health")
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    cwd = tmp_path_factory.mktemp("dev")
    (cwd / "demo_app.py").write_text(APP_SOURCE)
    server = start_dev("demo_app.py", cwd)
    try:
        yield server
    finally:
        server.stop()


def runs_json(url: str, *args: str) -> list[dict[str, Any]]:
    result = cli("runs", "list", "--json", *args, url=url)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_banner_lists_every_function(dev: DevServer) -> None:
    out = dev.output()
    for fn in ("demo/hello", "demo/slow", "other/noop"):
        assert fn in out


def test_banner_shows_the_dashboard_and_hints_for_this_url(dev: DevServer) -> None:
    out = dev.output()
    assert f"dashboard:      {dev.url}/dashboard" in out
    # The server is not on the default port, so every hint carries --url.
    assert f"stepwell send demo/hello --data '{{}}' --url {dev.url}" in out
    assert f"stepwell runs list --url {dev.url}" in out
    # ... and the hints work as printed.
    hint = next(line for line in out.splitlines() if line.startswith("list runs:"))
    args = hint.split("stepwell ", 1)[1].split()
    listed = subprocess.run(stepwell_cmd(*args), capture_output=True, text=True,
                            timeout=DEADLINE_S, env=clean_env())
    assert listed.returncode == 0, listed.stderr


def test_send_then_list_and_show(dev: DevServer) -> None:
    sent = cli("send", "demo/hello", "--data", '{"name": "ada"}', url=dev.url)
    assert sent.returncode == 0, sent.stderr
    event_id = sent.stdout.strip()
    assert len(event_id) == 26  # a ULID, alone on its line

    def completed() -> dict[str, Any] | None:
        found = runs_json(dev.url, "--event", event_id)
        return found[0] if found and found[0]["status"] == "Completed" else None

    run = wait_for(completed, "the run to complete")
    listed = cli("runs", "list", "--function", "hello", url=dev.url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["RUN", "ID", "FUNCTION", "STATUS", "STARTED", "DURATION", "EVENT",
                              "DOING"]
    row = next(r for r in rows if r.startswith(run["run_id"]))
    assert "demo/hello" in row and "Completed" in row and event_id in row

    shown = cli("runs", "show", run["run_id"], url=dev.url)
    assert shown.returncode == 0, shown.stderr
    assert "Completed" in shown.stdout
    assert '{"greeting": "hello ada"}' in shown.stdout
    assert "pick-name" in shown.stdout  # the step timeline
    as_json = json.loads(cli("runs", "show", run["run_id"], "--json", url=dev.url).stdout)
    assert as_json["output"] == {"greeting": "hello ada"}

    replayed = cli("runs", "replay", run["run_id"], url=dev.url)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"replaying run {run['run_id']} as run ")
    new_id = replayed.stdout.split(" as run ")[1].split()[0]
    wait_for(lambda: runs_json(dev.url, "--event", event_id)[0]["status"] == "Completed"
             and len(runs_json(dev.url, "--event", event_id)) == 2, "the replay to complete")
    assert new_id in {r["run_id"] for r in runs_json(dev.url, "--event", event_id)}
    bad = cli("runs", "replay", run["run_id"], "--from-step", "nope", url=dev.url)
    assert bad.returncode == 1 and "no step 'nope'" in bad.stderr and "(HTTP 400)" in bad.stderr


def test_send_with_id_deduplicates(dev: DevServer) -> None:
    first = cli("send", "demo/hello", "--id", "order-42", url=dev.url)
    second = cli("send", "demo/hello", "--id", "order-42", url=dev.url)
    assert first.stdout.strip() == second.stdout.strip() == "order-42"
    assert "duplicate" not in first.stderr
    assert second.stderr.startswith("duplicate: event order-42 was already received at ")
    assert "no run started" in second.stderr
    wait_for(lambda: runs_json(dev.url, "--event", "order-42"), "the run")
    assert len(runs_json(dev.url, "--event", "order-42")) == 1


def test_cancel_a_running_run(dev: DevServer) -> None:
    event_id = cli("send", "demo/slow", url=dev.url).stdout.strip()

    def sleeping() -> dict[str, Any] | None:
        found = runs_json(dev.url, "--event", event_id)
        return found[0] if found and found[0]["status"] == "Running" else None

    run = wait_for(sleeping, "the run to start")
    result = cli("runs", "cancel", run["run_id"], url=dev.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cancelled run {run['run_id']}"
    assert run["run_id"] in cli("runs", "list", "--status", "cancelled", url=dev.url).stdout
    assert "Cancelled" in cli("runs", "show", run["run_id"], url=dev.url).stdout


def test_unknown_run_is_a_one_line_error(dev: DevServer) -> None:
    for args in (("runs", "show", "nope"), ("runs", "cancel", "nope")):
        result = cli(*args, url=dev.url)
        assert result.returncode == 1
        assert "no run with id 'nope'" in result.stderr
        assert "Traceback" not in result.stderr


def test_unknown_function_is_reported_not_no_runs(dev: DevServer) -> None:
    result = cli("runs", "list", "--function", "hellp", url=dev.url)
    assert result.returncode == 1
    assert "no such function 'hellp'" in result.stderr and "demo/hello" in result.stderr
    known = cli("runs", "list", "--function", "other/noop", url=dev.url)
    assert known.returncode == 0 and known.stdout.strip() == "no runs"


def test_bulk_cancel_by_function(dev: DevServer) -> None:
    sent = [cli("send", "demo/nap", url=dev.url).stdout.strip() for _ in range(3)]

    def all_sleeping() -> bool:
        found = runs_json(dev.url, "--function", "demo/nap", "--status", "running")
        return {r["event_id"] for r in found} >= set(sent)

    wait_for(all_sleeping, "three sleeping runs")
    declined = subprocess.run(stepwell_cmd("runs", "cancel", "--function", "nap", "--url",
                                           dev.url), input="n\n", capture_output=True,
                              text=True, timeout=DEADLINE_S, env=clean_env())
    assert declined.returncode == 1 and "Cancel 3 run(s) of demo/nap?" in declined.stderr
    assert "Aborted" in declined.stderr
    assert len(runs_json(dev.url, "--function", "demo/nap", "--status", "running")) == 3
    future = cli("runs", "cancel", "--function", "nap", "--since", "2999-01-01T00:00:00Z",
                 "--yes", url=dev.url)
    assert future.returncode == 0 and "no queued or running runs of demo/nap" in future.stdout
    done = cli("runs", "cancel", "--function", "nap", "--since", "1h", "--yes", url=dev.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cancelled 3 run(s) of demo/nap"
    assert "cancelling" in done.stderr                         # the progress bar
    assert runs_json(dev.url, "--function", "demo/nap", "--status", "running") == []
    assert len(runs_json(dev.url, "--function", "demo/nap", "--status", "cancelled")) == 3
    for bad, words in [(("runs", "cancel"), "give a RUN_ID or --function"),
                       (("runs", "cancel", "x", "--function", "nap"), "not both"),
                       (("runs", "cancel", "--function", "nap", "--since", "soon"),
                        "neither an ISO 8601 time")]:
        result = cli(*bad, url=dev.url)
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_dev_retries_quickly_by_default(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """`stepwell dev` retries after 1 s x attempt unless told otherwise; `serve` keeps the
    production backoff."""
    from click.testing import CliRunner

    from stepwell import cli as cli_module

    seen: list[float | None] = []
    monkeypatch.setattr(cli_module, "run_server",
                        lambda *a, **kw: seen.append(kw["retry_interval"]))
    (tmp_path / "demo_app.py").write_text(APP_SOURCE)
    runner = CliRunner()
    target = str(tmp_path / "demo_app.py")
    for args in (["dev", target, "--no-reload"],
                 ["dev", target, "--no-reload", "--production-backoff"],
                 ["dev", target, "--no-reload", "--retry-interval", "5"],
                 ["serve"]):
        result = runner.invoke(cli_module.main, args)
        assert result.exit_code == 0, result.output
    assert seen == [1.0, None, 5.0, None]


def test_client_commands_do_not_import_the_engine() -> None:
    """`stepwell send` / `runs ...` start fast because they import neither the engine, the
    server, the storage backends, CEL nor httpx (measured: python -X importtime)."""
    code = ("import sys, stepwell.cli; heavy = [m for m in ('stepwell.runtime.engine', "
            "'stepwell.server.app', 'stepwell.store.sqlite', 'cel', 'httpx', 'uvicorn') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=DEADLINE_S, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_engine_default_db_is_the_cli_default() -> None:
    from stepwell import cli as cli_module
    from stepwell.runtime import engine

    assert cli_module.DEFAULT_DB == engine.DEFAULT_DB == "sqlite:///.stepwell/stepwell.db"


def test_failures_are_logged_in_text(dev: DevServer) -> None:
    event_id = cli("send", "demo/boom", url=dev.url).stdout.strip()
    run = wait_for(lambda: next(iter(runs_json(dev.url, "--event", event_id)), None),
                   "the run")
    line = wait_for(lambda: next((x for x in dev.output().splitlines()
                                  if f"run {run['run_id']} demo/boom failed:" in x), None),
                    "the run's failure line")
    assert " ERROR stepwell.run: " in line and line.endswith("ZeroDivisionError: division by zero")
    assert any("step 'explode' failed on attempt 1 of 1, no retry" in x
               for x in dev.output().splitlines())
    noted = next(x for x in dev.output().splitlines() if "about to explode" in x)
    assert noted.endswith(f"about to explode [run={run['run_id']} function=demo/boom]")


def test_log_format_json(tmp_path: Path) -> None:
    (tmp_path / "json_app.py").write_text(APP_SOURCE)
    server = start_dev("json_app.py", tmp_path, "--log-format", "json", "--log-level", "info")
    try:
        event_id = cli("send", "demo/boom", url=server.url).stdout.strip()

        def failure() -> dict[str, Any] | None:
            for line in server.output().splitlines():
                if line.startswith("{") and '"status": "failed"' in line:
                    record: dict[str, Any] = json.loads(line)
                    return record
            return None

        record = wait_for(failure, "the JSON failure line")
        [run] = runs_json(server.url, "--event", event_id)
        assert record["level"] == "error" and record["logger"] == "stepwell.run"
        assert record["run_id"] == run["run_id"] and record["function_id"] == "demo/boom"
        assert record["message"].endswith("ZeroDivisionError: division by zero")
        assert record["ts"].endswith("Z")
    finally:
        server.stop()


def test_runs_can_be_listed_by_what_they_wait_on(dev: DevServer) -> None:
    event_id = cli("send", "demo/slow", url=dev.url).stdout.strip()

    def sleeping() -> list[dict[str, Any]]:
        return [r for r in runs_json(dev.url, "--status", "sleeping")
                if r["event_id"] == event_id]

    [run] = wait_for(sleeping, "the run to be listed as sleeping")
    assert run["status"] == "Running" and run["activity"] == "sleeping"
    assert all(r["event_id"] != event_id for r in runs_json(dev.url, "--status", "waiting"))
    listed = cli("runs", "list", "--status", "sleeping", url=dev.url)
    assert listed.returncode == 0 and "Running (sleeping)" in listed.stdout
    assert "Running (sleeping)" in cli("runs", "show", run["run_id"], url=dev.url).stdout
    for status in ("waiting", "retrying", "invoking"):
        assert cli("runs", "list", "--status", status, url=dev.url).returncode == 0
    cli("runs", "cancel", run["run_id"], url=dev.url)


def test_orphaned_runs_are_listed_by_status(tmp_path: Path) -> None:
    """A run left asleep by a function the code no longer defines is listed by
    `runs list --status orphaned` (and a run of a defined function is not)."""
    import asyncio

    import stepwell

    old = stepwell.App("demo")

    @old.function(id="gone", trigger="demo/gone")
    async def gone(ctx: stepwell.Context, step: stepwell.Step) -> str:
        await step.sleep("nap", "50ms")
        return "back"

    async def leave_a_sleeping_run() -> str:
        async with stepwell.Engine(old, db=f"sqlite:///{tmp_path / 'sw.db'}",
                                   prefetch_seconds=0) as engine:
            [run] = await engine.runs(event_id=await engine.send("demo/gone", {}))
            await engine.idle()
            return run.id

    orphan = asyncio.run(leave_a_sleeping_run())
    (tmp_path / "live_app.py").write_text(APP_SOURCE)            # no demo/gone
    server = start_dev("live_app.py", tmp_path, "--no-reload")
    try:
        cli("send", "demo/slow", url=server.url)
        listed = wait_for(lambda: runs_json(server.url, "--status", "orphaned"),
                          "the run to be listed as orphaned")
        assert [(r["run_id"], r["activity"]) for r in listed] == [(orphan, "orphaned")]
        shown = cli("runs", "list", "--status", "orphaned", url=server.url)
        assert shown.returncode == 0 and "Running (orphaned)" in shown.stdout
        assert "demo/gone" in shown.stdout and "demo/slow" not in shown.stdout
    finally:
        server.stop()


def test_runs_list_and_show_say_what_a_run_is_doing_as_the_api_does(dev: DevServer) -> None:
    event_id = cli("send", "demo/slow", url=dev.url).stdout.strip()

    def sleeping() -> list[dict[str, Any]]:
        return runs_json(dev.url, "--status", "sleeping", "--event", event_id)

    [run] = wait_for(sleeping, "the run to be listed as sleeping")
    summary = run["state"]["summary"]
    assert summary.startswith("sleeping until ") and summary.endswith("(step 'nap')")
    assert summary in cli("runs", "list", "--event", event_id, url=dev.url).stdout
    shown = cli("runs", "show", run["run_id"], url=dev.url).stdout
    assert f"doing     {summary}" in shown
    as_json = json.loads(cli("runs", "show", run["run_id"], "--json", url=dev.url).stdout)
    assert as_json["state"] == run["state"]
    cli("runs", "cancel", run["run_id"], url=dev.url)


def test_runs_list_pages_with_a_cursor_and_searches_event_data(dev: DevServer) -> None:
    tag = uuid.uuid4().hex
    sent = [cli("send", "demo/hello", "--data", json.dumps({"name": tag, "n": n}),
                url=dev.url).stdout.strip() for n in range(3)]
    query = f'event.data.name == "{tag}"'
    wait_for(lambda: len(runs_json(dev.url, "--query", query)) == 3, "three runs")
    first = cli("runs", "list", "--query", query, "--limit", "2", url=dev.url)
    cursor = first.stdout.rsplit("--cursor ", 1)[1].strip()
    second = runs_json(dev.url, "--query", query, "--limit", "2", "--cursor", cursor)
    assert [r["event_id"] for r in second] == [sent[0]]
    assert sent[2] in first.stdout and sent[1] in first.stdout
    one = runs_json(dev.url, "--query", f"{query} && event.data.n == 1", "--since", "1h")
    assert [r["event_id"] for r in one] == [sent[1]]
    assert runs_json(dev.url, "--query", f'data.name == "{tag}" && data.n == 1') == one
    assert runs_json(dev.url, "--query", query, "--until", "1h") == []
    bad = cli("runs", "list", "--query", "event.data.n ==", url=dev.url)
    assert bad.returncode == 1 and "invalid 'query'" in bad.stderr


def test_runs_invoke_starts_a_run_with_the_data(dev: DevServer) -> None:
    started = cli("runs", "invoke", "demo/hello", "--data", '{"name": "bob"}', url=dev.url)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()

    def done() -> dict[str, Any] | None:
        run = json.loads(cli("runs", "show", run_id, "--json", url=dev.url).stdout)
        return run if run["status"] == "Completed" else None

    assert wait_for(done, "the invoked run")["output"] == {"greeting": "hello bob"}
    missing = cli("runs", "invoke", "demo/nope", url=dev.url)
    assert missing.returncode == 1 and "no function 'demo/nope'" in missing.stderr


def test_bad_status_filter_is_reported(dev: DevServer) -> None:
    result = cli("runs", "list", "--status", "sleepy", url=dev.url)
    assert result.returncode == 1 and "unknown run status" in result.stderr


@pytest.mark.parametrize(("data", "words"), [("{bad", "not valid JSON"),
                                             ("[1, 2]", "must be a JSON object")])
def test_bad_data_exits_2(data: str, words: str) -> None:
    result = cli("send", "demo/hello", "--data", data, url="http://127.0.0.1:9")
    assert result.returncode == 2
    assert words in result.stderr and "--data" in result.stderr


def unused_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("args", [("runs", "list"), ("runs", "show", "x"),
                                  ("runs", "cancel", "x"), ("send", "demo/hello")])
def test_unreachable_server(args: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    result = cli(*args, url=url)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: cannot reach stepwell at {url}: is `stepwell dev` running?")
    assert result.stdout == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dev_shuts_down_cleanly_on_signal(tmp_path: Path, sig: int) -> None:
    (tmp_path / "one_app.py").write_text(APP_SOURCE)
    server = start_dev("one_app.py:just_other", tmp_path)
    out = server.output()
    assert "other/noop" in out and "demo/hello" not in out  # only the named list's apps
    assert server.stop(sig) == 0
    assert server.output().rstrip().endswith("stepwell stopped")
    assert "Traceback" not in server.output()


def test_dev_loads_a_module_by_name(tmp_path: Path) -> None:
    (tmp_path / "mod_app.py").write_text(APP_SOURCE)
    server = start_dev("mod_app:app", tmp_path)
    try:
        assert "demo/hello" in server.output() and "other/noop" not in server.output()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("files", "target", "words"), [
    ({}, "missing.py", "no such file"),
    ({}, "no_such_module", "neither a Python file nor an importable module"),
    ({"empty.py": "x = 1\n"}, "empty.py", "no stepwell.App found"),
    ({"demo.py": APP_SOURCE}, "demo.py:nothing", "has no attribute 'nothing'"),
    ({"bad.py": "x = 1\n"}, "bad.py:x", "must be a stepwell.App"),
    ({"boom.py": "raise RuntimeError('kaboom')\n"}, "boom.py", "kaboom"),
])
def test_dev_reports_load_errors(tmp_path: Path, files: dict[str, str], target: str,
                                 words: str) -> None:
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    result = cli("dev", target, "--port", "0", cwd=tmp_path)
    assert result.returncode == 1
    assert words in result.stderr


@pytest.mark.parametrize(("command", "value", "words"), [
    ("dev", "2h", "at least 1 day"),
    ("worker", "soon", "invalid retention 'soon'"),
])
def test_bad_retention_is_a_one_line_error(tmp_path: Path, command: str, value: str,
                                           words: str) -> None:
    (tmp_path / "demo.py").write_text(APP_SOURCE)
    result = cli(command, "demo.py", "--retention", value,
                 "--db", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr


def function_ids(url: str) -> set[str]:
    try:
        body = httpx.get(url + "/v1/functions", timeout=2).json()
    except httpx.TransportError:       # between two generations of the server
        return set()
    return {f["id"] for f in body["data"]}


def load_error(url: str) -> dict[str, Any] | None:
    try:
        health: dict[str, Any] = httpx.get(url + "/health", timeout=2).json()
    except (httpx.TransportError, ValueError):
        return None
    return health if "load_error" in health else None


def test_dev_restarts_when_the_code_changes(tmp_path: Path) -> None:
    (tmp_path / "live_app.py").write_text(APP_SOURCE)
    server = start_dev("live_app.py", tmp_path)
    try:
        assert "demo/goodbye" not in function_ids(server.url)
        # A sleeping run survives the restart: its state is in the database.
        sent = cli("send", "demo/slow", "--data", "{}", url=server.url)
        assert sent.returncode == 0, sent.stderr
        (tmp_path / "live_app.py").write_text(APP_SOURCE + textwrap.dedent("""
            @app.function(id="goodbye", trigger="demo/goodbye")
            async def goodbye(ctx, step):
                return "bye"
        """))
        wait_for(lambda: "demo/goodbye" in function_ids(server.url), "the new function")
        # A broken edit keeps the server up, serving the last code that imported, and says
        # what is wrong; fixing it swaps the fixed code in.
        (tmp_path / "live_app.py").write_text(APP_SOURCE + "\ndef broken(:\n")
        wait_for(lambda: "SyntaxError" in server.output()
                 and "waiting for a change" in server.output(), "the syntax error report")
        assert "still serving the last code that imported" in server.output()
        health = wait_for(lambda: load_error(server.url), "/health to report the error")
        assert "SyntaxError" in health["load_error"]
        assert "Still serving the last code that imported" in health["load_error"]
        assert "demo/goodbye" in function_ids(server.url)
        assert health["functions"] == len(function_ids(server.url))
        # An event sent meanwhile starts a run of the last good code, which completes.
        sent = cli("send", "demo/goodbye", "--data", "{}", url=server.url)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: [r["output"] for r in runs_json(server.url, "--function",
                                                         "demo/goodbye")] == ["bye"],
                 "a run of the last good code")
        page = httpx.get(server.url + "/dashboard/runs", timeout=5)
        assert page.status_code == 200 and 'id="code-problem"' in page.text
        (tmp_path / "live_app.py").write_text(APP_SOURCE)
        wait_for(lambda: function_ids(server.url) and
                 "demo/goodbye" not in function_ids(server.url), "the fixed code")
        runs = runs_json(server.url, "--status", "running")
        assert [r["function_id"] for r in runs] == ["demo/slow"]
        assert "load_error" not in httpx.get(server.url + "/health", timeout=5).json()
    finally:
        assert server.stop(signal.SIGINT) == 0
    assert server.output().count("Traceback") == 1         # the broken edit's, and only it
    assert server.output().rstrip().endswith("stepwell stopped")


def test_export_a_run_then_check_new_code_against_it(dev: DevServer, tmp_path: Path) -> None:
    """The deploy check as CI runs it: exported histories, the new code, an exit status."""
    event_id = cli("send", "demo/slow", url=dev.url).stdout.strip()

    def sleeping() -> list[dict[str, Any]]:
        return [r for r in runs_json(dev.url, "--status", "sleeping")
                if r["event_id"] == event_id]

    [run] = wait_for(sleeping, "the run to sleep")
    histories = tmp_path / "histories"
    histories.mkdir()
    exported = cli("runs", "export", run["run_id"], "-o", str(histories / "slow.json"),
                   url=dev.url)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((histories / "slow.json").read_text())["run"]["id"] == run["run_id"]

    (tmp_path / "demo_app.py").write_text(APP_SOURCE)
    same = cli("check", str(tmp_path / "demo_app.py"), "--histories", str(histories))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "demo/slow: 1/1 unfinished runs replay cleanly" in same.stdout
    assert "OK: safe to deploy" in same.stdout

    changed = APP_SOURCE.replace('await step.run("first", lambda: 1)',
                                 'await step.run("first", lambda n: n, 2)')
    assert changed != APP_SOURCE
    (tmp_path / "new_app.py").write_text(changed)
    diverged = cli("check", str(tmp_path / "new_app.py"), "--histories", str(histories),
                   "--json")
    assert diverged.returncode == 1, diverged.stdout + diverged.stderr
    report = json.loads(diverged.stdout)
    [slow] = [f for f in report["functions"] if f["function_id"] == "demo/slow"]
    [divergence] = slow["divergences"]
    assert (divergence["run_id"], divergence["kind"], divergence["step"]) == (
        run["run_id"], "changed-args", "first")
    listed = cli("versions", url=dev.url)
    assert listed.returncode == 0, listed.stderr
    [slow] = [line for line in listed.stdout.splitlines() if line.startswith("demo/slow ")]
    assert "current" in slow and slow.split()[1].startswith("code:"), listed.stdout
    as_json = json.loads(cli("versions", "--json", url=dev.url).stdout)
    assert any(f["function_id"] == "demo/slow" and f["versions"] for f in as_json)
    missing = cli("runs", "export", "no-such-run", url=dev.url)
    assert missing.returncode == 1 and "no run with id 'no-such-run'" in missing.stderr
    cli("runs", "cancel", run["run_id"], url=dev.url)
