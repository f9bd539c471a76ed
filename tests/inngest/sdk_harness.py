"""Processes and HTTP helpers for the official-SDK tests (fixtures are in conftest.py).

`start_harness` starts `stepwell serve` (port 0, a fresh database, dev mode) and one SDK app
process pointed at it with `INNGEST_DEV`, syncs the app through `POST /v1/apps/sync`, and yields
an `SdkHarness`: send events, follow runs through the REST API, read the app's ledger. Every wait
polls against a deadline; processes are always terminated (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

HERE = Path(__file__).resolve().parent
PY_APP = HERE / "py_app" / "app.py"
TS_APP_DIR = HERE / "ts_app"
NPM_INSTALL_HINT = "npm ci --prefix tests/inngest/ts_app"
PIP_INSTALL_HINT = "bash scripts/setup.sh  (pip install -e '.[dev]')"

START_DEADLINE_S = 30.0   # a process prints its URL and answers its health check
RUN_DEADLINE_S = 30.0     # a run reaches a terminal status
POLL_S = 0.05

# Extra `stepwell serve` flags. `--retry-interval 1`: retries back off linearly by 1s instead of
# Inngest's 15s, 30s, 1m... schedule (the same flag as `inngest dev --retry-interval`).
SERVE_EXTRA_ARGS = ["--retry-interval", "1"]

# Databases the SDK suites run against, as in tests/conftest.py: both by default,
# `STEPWELL_TEST_DB=sqlite` (or `postgres`) for one. Postgres is the server at STEPWELL_TEST_PG
# (default postgresql://postgres@127.0.0.1:5432/postgres, which `.ci/run` starts); each harness
# gets a fresh empty database that `stepwell serve` migrates itself, dropped afterwards.
DB_BACKENDS = {"both": ["sqlite", "postgres"], "sqlite": ["sqlite"],
               "postgres": ["postgres"]}[os.environ.get("STEPWELL_TEST_DB", "both")]
PG_ADMIN_URL = os.environ.get("STEPWELL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TERMINAL = frozenset({"Completed", "Failed", "Cancelled", "Skipped"})


# --- processes -------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process whose combined output is pumped into memory by a reader thread."""

    name: str
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    url: str = ""

    def output(self) -> str:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.seen)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: never leaves the process behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if self.reader is not None:
                self.reader.join(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = RUN_DEADLINE_S,
             context: Callable[[], str] | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(POLL_S)
    extra = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what} "
                         f"(last value: {last!r}){extra}")


URL_RE = re.compile(r"https?://[\w.\-\[\]]+:(\d+)")


def start_process(name: str, cmd: list[str], *, env: dict[str, str], cwd: Path,
                  ready: Callable[[str], bool]) -> Process:
    """Start `cmd`, read the first `http://host:port` with a non-zero port it prints, then
    poll `ready(url)` until it is true."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    process = Process(name, proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            process.lines.put(line)

    process.reader = threading.Thread(target=pump, name=f"pump-{name}", daemon=True)
    process.reader.start()

    def url_from_output() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with code {proc.returncode} before it was "
                                 f"ready:\n$ {' '.join(cmd)}\n{process.tail()}")
        for match in URL_RE.finditer(process.output()):
            if match.group(1) != "0":
                return match.group(0)
        return None

    def is_ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with code {proc.returncode}:\n{process.tail()}")
        try:
            return ready(process.url)
        except httpx.TransportError:
            return False

    try:
        process.url = wait_for(url_from_output, f"{name} to print its URL", START_DEADLINE_S,
                               process.tail)
        wait_for(is_ready, f"{name} to answer at {process.url}", START_DEADLINE_S, process.tail)
    except BaseException:
        process.stop()
        raise
    return process


def free_port() -> int:
    """A port that was free a moment ago (only for the rare case a port must be known before
    the process that listens on it starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """The test process's environment without anything that configures Inngest or stepwell."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("INNGEST_", "STEPWELL_"))}


# --- stepwell serve ---------------------------------------------------------------------------


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """A new, empty database for one `stepwell serve`; its URL. Postgres ones are dropped after.

    Postgres databases are named like tests/conftest.py's (`sw_test_<pid>_...`), so a session
    that dies leaves nothing behind for long: the next session's template fixture drops them.
    """
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'stepwell.db'}"
        return
    assert backend == "postgres", backend
    name = f"sw_test_{os.getpid()}_sdk{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"the SDK tests on Postgres need a server at {PG_ADMIN_URL} (`.ci/run` "
                    f"starts it; STEPWELL_TEST_DB=sqlite runs SQLite only): {exc}")
    with closing(admin):
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    finally:
        with closing(psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Keys:
    """Production mode: the server requires the event key on `/e/{key}` and signs its calls to
    SDK apps with the signing key; the apps verify the signatures."""

    event_key: str
    signing_key: str

    @classmethod
    def random(cls) -> Keys:
        return cls(event_key=secrets.token_hex(16),
                   signing_key=f"signkey-test-{secrets.token_hex(32)}")


def start_serve(db_url: str, cwd: Path, *, keys: Keys | None = None, port: int = 0,
                sync_urls: tuple[str, ...] = (), extra_args: tuple[str, ...] = ()) -> Process:
    cmd = [sys.executable, "-m", "stepwell", "serve", "--db", db_url, "--host", "127.0.0.1",
           "--port", str(port), *SERVE_EXTRA_ARGS, *extra_args]
    if keys is not None:
        cmd += ["--event-key", keys.event_key, "--signing-key", keys.signing_key]
    for url in sync_urls:
        cmd += ["-u", url]

    def healthy(url: str) -> bool:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200

    return start_process("stepwell serve", cmd, env=base_env(), cwd=cwd, ready=healthy)


# --- SDK apps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSpec:
    app_id: str
    cmd: list[str]
    cwd: Path
    env: tuple[tuple[str, str], ...] = ()    # extra environment of the app's process


def python_app_spec() -> AppSpec:
    probe = subprocess.run([sys.executable, "-c", "import inngest, fastapi, uvicorn"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.fail("the Python SDK app needs `inngest`, `fastapi` and `uvicorn` in this "
                    f"interpreter ({sys.executable}); install the dev dependencies with "
                    f"{PIP_INSTALL_HINT}:\n{probe.stderr}")
    return AppSpec("py-app", [sys.executable, str(PY_APP), "0"], PY_APP.parent)


TS_VERSIONS = {"v3": ("inngest-v3", "3."), "v4": ("inngest", "4.")}


def typescript_app_spec(version: str) -> AppSpec:
    node = shutil.which("node")
    if node is None:
        pytest.fail("the TypeScript SDK tests need Node.js >= 20 on PATH, and the npm packages: "
                    f"{NPM_INSTALL_HINT}")
    package, major = TS_VERSIONS[version]
    manifest = TS_APP_DIR / "node_modules" / package / "package.json"
    if not manifest.is_file():
        pytest.fail(f"npm package {package!r} is not installed for the TypeScript SDK tests; "
                    f"run: {NPM_INSTALL_HINT}")
    installed = json.loads(manifest.read_text())["version"]
    if not installed.startswith(major):
        pytest.fail(f"{package} {installed} is installed but the tests expect {major}x; "
                    f"run: {NPM_INSTALL_HINT}")
    return AppSpec(f"ts-{version}", [node, str(TS_APP_DIR / f"app_{version}.mjs"), "0"],
                   TS_APP_DIR)


def start_app(spec: AppSpec, server_url: str, keys: Keys | None = None) -> Process:
    """Start an SDK app configured the way its docs say: `INNGEST_DEV=<server>` in dev mode;
    `INNGEST_DEV=0` + `INNGEST_BASE_URL` + `INNGEST_SIGNING_KEY` + `INNGEST_EVENT_KEY` in
    production mode."""
    env = base_env()
    env.update(dict(spec.env))
    env["PORT"] = "0"
    env["INNGEST_BASE_URL"] = server_url  # where the API and the event API are
    if keys is None:
        env["INNGEST_DEV"] = server_url   # dev mode (a URL also sets both origins)
    else:
        env["INNGEST_DEV"] = "0"          # production mode, as Inngest's self-hosting docs say
        env["INNGEST_SIGNING_KEY"] = keys.signing_key
        env["INNGEST_EVENT_KEY"] = keys.event_key

    def introspects(url: str) -> bool:
        response = httpx.get(f"{url}/api/inngest", timeout=2)
        if keys is not None:  # unsigned introspection: 200 (Python) or 401 (TypeScript)
            return response.status_code in (200, 401)
        return response.status_code == 200 and response.json().get("mode") == "dev"

    return start_process(spec.app_id, spec.cmd, env=env, cwd=spec.cwd, ready=introspects)


# --- the harness the tests use ----------------------------------------------------------------


@dataclass
class SdkHarness:
    """A running `stepwell serve` with one synced SDK app, and helpers to drive it."""

    app_id: str
    server: Process
    app: Process
    client: httpx.Client
    synced: dict[str, Any]
    keys: Keys | None = None

    @property
    def event_key(self) -> str:
        return "test-key" if self.keys is None else self.keys.event_key  # dev: any key

    @property
    def url(self) -> str:
        return self.server.url

    def fn(self, local_id: str) -> str:
        """The composite function id the SDK registers: `<appId>-<fnId>`."""
        return f"{self.app_id}-{local_id}"

    def logs(self) -> str:
        return (f"--- stepwell serve output (tail)\n{self.server.tail()}\n"
                f"--- {self.app_id} output (tail)\n{self.app.tail()}")

    # events

    def send(self, *events: dict[str, Any]) -> list[str]:
        """POST /e/{key} with one or more `{"name", "data", ...}` events; their ids."""
        response = self.client.post(f"{self.url}/e/{self.event_key}", json=list(events))
        assert response.status_code == 200, f"/e answered {response.status_code}: {response.text}"
        body = response.json()
        assert body.get("status") == 200, body
        ids = body["ids"]
        assert len(ids) == len(events), body
        return list(ids)

    def send_one(self, name: str, data: dict[str, Any]) -> str:
        return self.send({"name": name, "data": data})[0]

    # runs

    def event_runs(self, event_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.url}/v1/events/{event_id}/runs")
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def get_run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"{self.url}/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json()["data"])

    def run_of(self, event_id: str, fn_local_id: str | None = None,
               deadline_s: float = RUN_DEADLINE_S) -> dict[str, Any]:
        """The (single) run `event_id` started, of `fn_local_id` if given, once it exists."""
        wanted = None if fn_local_id is None else self.fn(fn_local_id)

        def found() -> dict[str, Any] | None:
            runs = [r for r in self.event_runs(event_id)
                    if wanted is None or r.get("function_id") == wanted]
            assert len(runs) <= 1, f"expected one run for event {event_id}, got {runs}"
            return runs[0] if runs else None

        return dict(wait_for(found, f"a run of {wanted or 'any function'} for event {event_id}",
                             deadline_s, self.logs))

    def wait_run(self, run_id: str, statuses: frozenset[str] | set[str] = TERMINAL,
                 deadline_s: float = RUN_DEADLINE_S) -> dict[str, Any]:
        """Poll `GET /v1/runs/{id}` until its status is one of `statuses`; the run."""

        def done() -> dict[str, Any] | None:
            run = self.get_run(run_id)
            return run if run["status"] in statuses else None

        return dict(wait_for(done, f"run {run_id} to reach {sorted(statuses)}", deadline_s,
                             lambda: f"run now: {self.get_run(run_id)}\n{self.logs()}"))

    def finish(self, event_id: str, fn_local_id: str | None = None,
               deadline_s: float = RUN_DEADLINE_S) -> dict[str, Any]:
        """The run `event_id` started, once terminal, with its steps."""
        run = self.run_of(event_id, fn_local_id, deadline_s)
        return self.wait_run(run["run_id"], deadline_s=deadline_s)

    def events_named(self, name: str) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.url}/v1/events", params={"name": name, "limit": 100})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    # the app's own record of what its steps did

    def ledger(self, kind: str | None = None, key: Any = None) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.app.url}/_test/ledger")
        assert response.status_code == 200, response.text
        entries = list(response.json())
        return [e for e in entries
                if (kind is None or e["kind"] == kind) and (key is None or e.get("key") == key)]


def step_names(run: dict[str, Any]) -> list[str]:
    """User-facing step ids on a run's timeline, in order."""
    return [str(s.get("name") or s.get("display_name") or s["id"]) for s in run.get("steps", [])]


def unique(prefix: str) -> str:
    """A value no other test (or earlier run of this one on the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def start_harness(spec: AppSpec, db_url: str, cwd: Path, keys: Keys | None = None,
                  serve_args: tuple[str, ...] = ()) -> Iterator[SdkHarness]:
    server = start_serve(db_url, cwd, keys=keys, extra_args=serve_args)
    app: Process | None = None
    # Inngest's REST API takes the signing key as a bearer token in production mode.
    headers = {} if keys is None else {"Authorization": f"Bearer {keys.signing_key}"}
    client = httpx.Client(timeout=10, headers=headers)
    try:
        app = start_app(spec, server.url, keys)
        response = client.post(f"{server.url}/v1/apps/sync",
                               json={"url": f"{app.url}/api/inngest"}, timeout=30)
        assert response.status_code == 200, (
            f"syncing {spec.app_id} failed: {response.status_code} {response.text}\n"
            f"--- server\n{server.tail()}\n--- app\n{app.tail()}")
        synced = dict(response.json()["data"])
        yield SdkHarness(spec.app_id, server, app, client, synced, keys)
    finally:
        client.close()
        try:
            if app is not None:
                app.stop()
        finally:
            server.stop()
