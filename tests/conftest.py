"""Shared fixtures: a real database per test (SQLite and Postgres) and a virtual clock.

`db_url` is parametrized over both backends, so every engine test runs on SQLite (a file in the
test's tmp dir) and on the real Postgres at `STEPWELL_TEST_PG` (default
`postgresql://postgres@127.0.0.1:5432/postgres`, the server `.ci/run` starts). Each Postgres test
gets its own database, copied from a template that the migrations built once per schema version
(`CREATE DATABASE ... TEMPLATE` is a cheap file copy) and dropped afterwards.
`STEPWELL_TEST_DB=sqlite` (or `postgres`) limits the run to one backend.

Fixtures for Postgres-only tests: `pg_database` (a fresh migrated database's URL for one test)
and `pg_databases` (a session-wide factory of named ones).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from importlib import resources
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest

import stepwell
from stepwell.runtime.upkeep import pid_alive
from stepwell.store.postgres import migrate
from stepwell.testing import VirtualClock

# Hypothesis' per-example deadline (200 ms) is a timing assertion: on a loaded machine a pure
# property test failed with "Unreliable test timings" (328 ms, then 1 ms). Tests never depend on
# the machine's speed, so no deadline.
hypothesis.settings.register_profile("stepwell", deadline=None)
hypothesis.settings.load_profile("stepwell")

EngineFactory = Callable[..., Any]
PG_ADMIN_URL = os.environ.get("STEPWELL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = {"both": ["sqlite", "postgres"], "sqlite": ["sqlite"],
            "postgres": ["postgres"]}[os.environ.get("STEPWELL_TEST_DB", "both")]
TEST_DB_PREFIX = "sw_test_"
TEMPLATE_LOCK = "hashtextextended('stepwell:test-template', 0)"
TEMPLATE_KEEP_S = 6 * 3600
_names = itertools.count()


def pg_url(dbname: str) -> str:
    """The admin URL pointed at another database."""
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def pg_admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"the Postgres tests need a server at {PG_ADMIN_URL} (`.ci/run` starts it; "
            f"STEPWELL_TEST_DB=sqlite skips them): {exc}") from exc


def _schema_digest() -> str:
    folder = resources.files("stepwell.store") / "migrations" / "postgres"
    digest = hashlib.sha1()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:10]


def _build_template(admin: psycopg.Connection[Any], name: str) -> None:
    """Create and migrate the template `name` (under TEMPLATE_LOCK), stamped with the time."""
    admin.execute(f'CREATE DATABASE "{name}"')
    with closing(psycopg.connect(pg_url(name), autocommit=True)) as conn:
        migrate(conn)
    admin.execute(f"COMMENT ON DATABASE \"{name}\" IS '{int(time.time())}'")


def _stale_template(admin: psycopg.Connection[Any], db: str, current: str) -> bool:
    """Another schema's template, built long ago. A recent one may serve a pytest session of
    another checkout running now (a branch with other migrations), so it is left alone."""
    if not db.startswith("sw_tmpl_") or db == current:
        return False
    row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                        "WHERE datname = %s", (db,)).fetchone()
    built = None if row is None else row[0]
    return built is not None and built.isdigit() and time.time() - int(built) > TEMPLATE_KEEP_S


@pytest.fixture(scope="session")
def pg_template() -> str:
    """The name of a database with the current schema, to copy per test. Built once per schema
    version (concurrent pytest sessions share it); databases left by dead sessions are dropped."""
    if "postgres" not in BACKENDS:
        pytest.skip("Postgres tests are off (STEPWELL_TEST_DB=sqlite)")
    name = f"sw_tmpl_{_schema_digest()}"
    with closing(pg_admin()) as admin:
        admin.execute(f"SELECT pg_advisory_lock({TEMPLATE_LOCK})")
        try:
            names = [r[0] for r in admin.execute("SELECT datname FROM pg_database")]
            for db in names:
                stale_test = db.startswith(TEST_DB_PREFIX) and not pid_alive(
                    int(db.removeprefix(TEST_DB_PREFIX).split("_")[0] or 0))
                if stale_test or _stale_template(admin, db, name):
                    admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            if name not in names:
                _build_template(admin, name)
        finally:
            admin.execute(f"SELECT pg_advisory_unlock({TEMPLATE_LOCK})")
    return name


def _copy_template(admin: psycopg.Connection[Any], template: str, name: str) -> None:
    try:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    except psycopg.errors.InvalidCatalogName:
        # Dropped by a session of an older checkout (which dropped every other template).
        admin.execute(f"SELECT pg_advisory_lock({TEMPLATE_LOCK})")
        try:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                             (template,)).fetchone() is None:
                _build_template(admin, template)
        finally:
            admin.execute(f"SELECT pg_advisory_unlock({TEMPLATE_LOCK})")
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')


@pytest.fixture(scope="session")
def pg_databases(pg_template: str) -> Iterator[Callable[[str], str]]:
    """A factory: `pg_databases(name)` creates a fresh migrated database (dropping any old one
    of that name) and returns its URL; all are dropped at the end of the session."""
    created: list[str] = []

    def create(name: str) -> str:
        with closing(pg_admin()) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            _copy_template(admin, pg_template, name)
        created.append(name)
        return pg_url(name)

    yield create
    with closing(pg_admin()) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """A fresh, migrated Postgres database for one test; its URL. Dropped after the test."""
    name = f"{TEST_DB_PREFIX}{os.getpid()}_{next(_names)}"
    with closing(pg_admin()) as admin:
        _copy_template(admin, pg_template, name)
    try:
        yield pg_url(name)
    finally:
        with closing(pg_admin()) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test using `db_url` runs on each backend. The end-to-end tests and those marked
    `postgres_strict` (the storage contract) also run on Postgres with `STEPWELL_PG_GUESS=0`
    (`postgres-strict`): writers then wait for every answer, which is the path a wrong guess
    falls back to, so it must pass the same suite."""
    if "db_url" not in metafunc.fixturenames:
        return
    backends = list(BACKENDS)
    strict_too = (metafunc.definition.path.parent.name == "e2e"
                  or metafunc.definition.get_closest_marker("postgres_strict") is not None)
    if "postgres" in backends and strict_too:
        backends.append("postgres-strict")
    metafunc.parametrize("db_url", backends, indirect=True)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> str:
    backend = getattr(request, "param", BACKENDS[0])
    if backend.startswith("postgres"):
        if backend == "postgres-strict":
            monkeypatch.setenv("STEPWELL_PG_GUESS", "0")
        url: str = request.getfixturevalue("pg_database")
        return url
    return f"sqlite:///{tmp_path / 'stepwell.db'}"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1_767_225_600_000)  # 2026-01-01T00:00:00Z


@pytest.fixture
def make_engine(db_url: str, clock: VirtualClock,
                request: pytest.FixtureRequest) -> EngineFactory:
    """`async with make_engine(app) as engine:` a started engine on a real database.

    On the virtual clock engines replay every run to check its determinism; a test marked
    `@pytest.mark.counts_executions` (it counts how often handlers run, or changes the code
    between replays on purpose) gets engines without that check."""
    unchecked = request.node.get_closest_marker("counts_executions") is not None

    @asynccontextmanager
    async def factory(*apps: stepwell.App, **kwargs: Any) -> AsyncIterator[stepwell.Engine]:
        kwargs.setdefault("db", db_url)
        kwargs.setdefault("clock", clock)
        if unchecked:
            kwargs.setdefault("check_determinism", False)
        engine = stepwell.Engine(*apps, **kwargs)
        async with engine:
            yield engine

    return factory
