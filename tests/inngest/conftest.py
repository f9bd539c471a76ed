"""Fixtures for the official-SDK tests: real `stepwell serve` + real Inngest SDK apps.

Per test module (and per SDK version for TypeScript) the fixtures start

1. `stepwell serve` on port 0 with a fresh database, on SQLite and on Postgres
   (`STEPWELL_TEST_DB` picks one, as for the other suites), in dev mode (no keys), with
   `--retry-interval 1` so step retries back off 1s at a time on the real clock (as
   `inngest dev --retry-interval 1` does); its URL is read from the banner, then `/health` is
   polled;
2. an SDK app as its own process, pointed at the server the way a user would do it
   (`INNGEST_DEV=<server url>`, plus `INNGEST_BASE_URL`), on port 0 (the URL is read from the
   app's "listening on" line, then its `GET /api/inngest` introspection is polled);
3. and syncs the app with `POST /v1/apps/sync {"url": "<app>/api/inngest"}`.

Missing prerequisites (Node, the npm packages, the Python SDK) fail with the command that
installs them: these tests are never skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import the shared harness and scenarios from this directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest.register_assert_rewrite("sdk_harness", "sdk_scenarios", "server_step_scenarios")

from sdk_harness import (  # noqa: E402
    DB_BACKENDS,
    TS_VERSIONS,
    Keys,
    SdkHarness,
    fresh_database,
    python_app_spec,
    start_harness,
    typescript_app_spec,
)
from upstream import Upstream, running_upstream  # noqa: E402

# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """Which database `stepwell serve` runs on; each harness gets a fresh one."""
    return str(request.param)


@pytest.fixture(scope="module")
def py_sdk(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """`stepwell serve` + the Python SDK app (inngest 0.5.x under FastAPI), synced."""
    spec = python_app_spec()
    tmp = tmp_path_factory.mktemp(f"{spec.app_id}-{db_backend}")
    with fresh_database(db_backend, tmp) as db_url:
        yield from start_harness(spec, db_url, tmp)


@pytest.fixture(scope="module", params=sorted(TS_VERSIONS))
def ts_sdk(request: pytest.FixtureRequest, db_backend: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """`stepwell serve` + a TypeScript SDK app (`inngest` v3 or v4 under `inngest/node`)."""
    spec = typescript_app_spec(str(request.param))
    tmp = tmp_path_factory.mktemp(f"{spec.app_id}-{db_backend}")
    with fresh_database(db_backend, tmp) as db_url:
        yield from start_harness(spec, db_url, tmp)


@pytest.fixture(scope="module")
def py_sdk_production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """Production mode: event key + signing key on the server and in the Python app."""
    tmp = tmp_path_factory.mktemp("py-app-production")
    with fresh_database("sqlite", tmp) as db_url:
        yield from start_harness(python_app_spec(), db_url, tmp, Keys.random())


@pytest.fixture(scope="module", params=sorted(TS_VERSIONS))
def ts_sdk_production(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[SdkHarness]:
    """Production mode: event key + signing key on the server and in a TypeScript app."""
    spec = typescript_app_spec(str(request.param))
    tmp = tmp_path_factory.mktemp(f"{spec.app_id}-production")
    with fresh_database("sqlite", tmp) as db_url:
        yield from start_harness(spec, db_url, tmp, Keys.random())


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """The upstream HTTP server that `step.fetch` / `step.ai.infer` steps call (through
    `stepwell serve`), shared by every harness."""
    with running_upstream() as server:
        yield server
