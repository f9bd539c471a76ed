"""Broken disks (issue 10.10): a full disk answers 507 with a clear message, loses nothing and
recovers as soon as there is space again; a corrupted SQLite file is refused at start; a write
lock held by another process makes a request wait a bounded time and answer 503 with
Retry-After.

Full disks are real: a small tmpfs when the tests run as root, else SQLite's own size limit
(`PRAGMA max_page_count`, which makes SQLite fail with the same SQLITE_FULL it reports for a
full disk), and on Postgres the server's own `disk_full` error (SQLSTATE 53100) raised by a
trigger (filling the disk of a shared Postgres server is not an option).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import stepwell
from stepwell.server.app import create_app
from stepwell.service import Service
from stepwell.store import sqlite as sqlite_store
from stepwell.store.base import StoreError
from stepwell.testing import VirtualClock

EVENT = {"name": "disk/ev", "data": {"pad": "x" * 2000}}


def disk_app() -> stepwell.App:
    app = stepwell.App("disk")

    @app.function(id="f", trigger="disk/ev")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> int:
        return len(ctx.event.data["pad"])

    return app


@contextlib.asynccontextmanager
async def serve(db: str, clock: VirtualClock) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                     stepwell.Engine]]:
    async with stepwell.Engine(disk_app(), db=db, clock=clock) as engine:
        transport = httpx.ASGITransport(app=create_app(Service(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http, engine


async def post(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post("/e/dev", json=EVENT)


async def fill_until_refused(http: httpx.AsyncClient, limit: int = 5000
                             ) -> tuple[list[str], httpx.Response]:
    """Send events until one is refused; the ids acknowledged before, and the refusal."""
    acked: list[str] = []
    for _ in range(limit):
        reply = await post(http)
        if reply.status_code != 200:
            return acked, reply
        acked += reply.json()["ids"]
    raise AssertionError(f"{limit} events were all accepted: the disk never filled")


async def assert_full_then_recovers(http: httpx.AsyncClient, engine: stepwell.Engine,
                                    acked: list[str], refused: httpx.Response,
                                    make_room: Any) -> None:
    assert refused.status_code == 507, refused.text
    body = refused.json()
    assert body["status"] == 507 and "full" in body["error"] and "nothing was written" in (
        body["error"]), body
    assert refused.headers["retry-after"].isdigit()
    make_room()
    again = await post(http)                       # at once: no restart, no waiting
    assert again.status_code == 200, again.text
    await engine.idle()
    for event_id in [*acked, *again.json()["ids"]]:
        found = await http.get(f"/v1/events/{event_id}")
        assert found.status_code == 200, (event_id, found.text)


# --- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only: mounting needs it)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the max_page_count test covers SQLITE_FULL")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_really_full_disk_answers_507_and_recovers_at_once(
        tiny_tmpfs: Path, clock: VirtualClock) -> None:
    filler = tiny_tmpfs / "filler"
    async with serve(f"sqlite:///{tiny_tmpfs / 'db.sqlite'}", clock) as (http, engine):
        assert (await post(http)).status_code == 200
        stat = os.statvfs(tiny_tmpfs)
        # Leave room for a few events only, in a file that can be deleted to make room.
        filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - 64 * 1024, 0))
        acked, refused = await fill_until_refused(http)
        await assert_full_then_recovers(http, engine, acked, refused, filler.unlink)


async def test_sqlite_full_from_its_size_limit_answers_507_and_recovers(
        tmp_path: Path, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    conns: list[sqlite3.Connection] = []
    real_connect = sqlite_store._connect

    def limited(path: str, *, fsync: bool) -> sqlite3.Connection:
        conn = real_connect(path, fsync=fsync)
        conns.append(conn)
        return conn

    monkeypatch.setattr(sqlite_store, "_connect", limited)
    async with serve(f"sqlite:///{tmp_path / 'db.sqlite'}", clock) as (http, engine):
        assert (await post(http)).status_code == 200
        writer = conns[0]                       # the first connection is the writer's
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count = {pages + 40}")
        acked, refused = await fill_until_refused(http)
        await assert_full_then_recovers(
            http, engine, acked, refused,
            lambda: writer.execute("PRAGMA max_page_count = 1073741823"))


async def test_postgres_disk_full_answers_507_and_recovers(pg_database: str,
                                                           clock: VirtualClock) -> None:
    with contextlib.closing(psycopg.connect(pg_database, autocommit=True)) as admin:
        async with serve(pg_database, clock) as (http, engine):
            first = await post(http)
            assert first.status_code == 200
            admin.execute("""
                CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'
                      USING ERRCODE = 'disk_full'; END $$;
                CREATE TRIGGER full_disk BEFORE INSERT ON events
                    FOR EACH ROW EXECUTE FUNCTION full_disk();""")
            refused = await post(http)
            await assert_full_then_recovers(
                http, engine, first.json()["ids"], refused,
                lambda: admin.execute("DROP TRIGGER full_disk ON events"))


# --- a corrupted SQLite file -----------------------------------------------------------------


async def test_a_corrupted_sqlite_file_is_refused_at_start(tmp_path: Path,
                                                           clock: VirtualClock) -> None:
    path = tmp_path / "db.sqlite"
    async with serve(f"sqlite:///{path}", clock) as (http, engine):
        for _ in range(100):
            assert (await post(http)).status_code == 200
    conn = sqlite3.connect(path)
    page_size, pages = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                        for p in ("page_size", "page_count"))
    conn.close()
    assert pages > 20
    with path.open("r+b") as f:                 # scribble over pages in the middle of it
        for page in range(pages // 2, pages // 2 + 3):
            f.seek(page * page_size + 8)
            f.write(b"\xde\xad\xbe\xef" * (page_size // 8))
    engine = stepwell.Engine(disk_app(), db=f"sqlite:///{path}", clock=clock)
    with pytest.raises(StoreError,
                       match=r"is corrupted \(PRAGMA quick_check: .*restore it from a backup"):
        await engine.start()


def test_stepwell_serve_on_a_corrupted_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    done = subprocess.run([sys.executable, "-m", "stepwell", "serve", "--db",
                           f"sqlite:///{path}", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert "is corrupted" in done.stderr and str(path) in done.stderr, done.stderr


# --- a write lock held by another process ------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def write_lock_held_by_another_process(path: Path) -> Iterator[None]:
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            yield
        finally:
            holder.stdin.close()
            holder.wait(60)


async def test_a_write_lock_held_elsewhere_answers_503_with_retry_after(
        tmp_path: Path, clock: VirtualClock) -> None:
    path = tmp_path / "db.sqlite"
    async with serve(f"sqlite:///{path}", clock) as (http, _):
        assert (await post(http)).status_code == 200
        with write_lock_held_by_another_process(path):
            refused = await post(http)
        # Before: a 30 s wait, then a 500. Now: the bounded wait, then a 503.
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "locked by another process" in refused.json()["error"]
        again = await post(http)
        assert again.status_code == 200, again.text
