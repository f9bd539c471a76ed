"""The schema the Postgres migrations produce is the expected one.

Two checks:
- a snapshot (`postgres_schema.txt`, committed): every column with its type, nullability and
  default, every index and constraint. A migration that changes the schema must change the
  snapshot in the same commit (`STEPWELL_UPDATE_SCHEMA=1` rewrites it; review the diff);
- parity with SQLite: the same tables, columns and indexes (Postgres may add indexes), so a
  migration added to one backend and forgotten in the other fails here.
"""

from __future__ import annotations

import difflib
import os
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg

from stepwell.store.sqlite import migrate as sqlite_migrate

SNAPSHOT = Path(__file__).with_name("postgres_schema.txt")
# Columns named differently: `user` is a reserved word in Postgres.
RENAMED = {("events", "user"): ("events", "user_data")}
# Indexes only Postgres has (listings ordered by time; SQLite sorts those small results).
POSTGRES_ONLY_INDEXES: set[str] = set()


def postgres_schema(url: str) -> list[str]:
    lines: list[str] = []
    with closing(psycopg.connect(url)) as conn:
        for table, column, kind, nullable, default in conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position"):
            lines.append(f"column {table}.{column} {kind}"
                         f"{' not null' if nullable == 'NO' else ''}"
                         f"{f' default {default}' if default is not None else ''}")
        for table, name, definition in conn.execute(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'public' ORDER BY tablename, indexname"):
            lines.append(f"index {table}.{name}: {definition}")
        for table, name, definition in conn.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                "ORDER BY 1, 2"):
            lines.append(f"constraint {table}.{name}: {definition}")
        for (name, identity) in conn.execute(
                "SELECT table_name || '.' || column_name, identity_generation "
                "FROM information_schema.columns WHERE table_schema = 'public' "
                "AND is_identity = 'YES' ORDER BY 1"):
            lines.append(f"identity {name}: generated {identity.lower()}")
    return lines


def test_migrations_produce_the_expected_schema(pg_database: str) -> None:
    actual = postgres_schema(pg_database)
    if os.environ.get("STEPWELL_UPDATE_SCHEMA") == "1":
        SNAPSHOT.write_text("\n".join(actual) + "\n")
    expected = SNAPSHOT.read_text().splitlines()
    diff = "\n".join(difflib.unified_diff(expected, actual, "expected (postgres_schema.txt)",
                                          "from the migrations", lineterm=""))
    assert actual == expected, (
        "the Postgres schema differs from tests/store/postgres_schema.txt; if the change is "
        f"intended, rerun with STEPWELL_UPDATE_SCHEMA=1 and commit the snapshot:\n{diff}")


def sqlite_tables(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        sqlite_migrate(conn)
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%'")]
        columns: dict[str, set[str]] = {}
        for table in names:
            for row in conn.execute(f"PRAGMA table_info({table})"):
                renamed = RENAMED.get((table, row[1]), (table, row[1]))
                columns.setdefault(renamed[0], set()).add(renamed[1])
        indexes = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    return columns, indexes


def postgres_tables(url: str) -> tuple[dict[str, set[str]], set[str]]:
    with closing(psycopg.connect(url)) as conn:
        columns: dict[str, set[str]] = {}
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public'"):
            columns.setdefault(table, set()).add(column)
        # Indexes created explicitly (not those backing primary keys / unique constraints).
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes i WHERE schemaname = 'public' AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)")}
    return columns, indexes


def test_postgres_has_the_tables_columns_and_indexes_of_sqlite(pg_database: str,
                                                                tmp_path: Path) -> None:
    sqlite_columns, sqlite_indexes = sqlite_tables(tmp_path / "schema.db")
    pg_columns, pg_indexes = postgres_tables(pg_database)
    assert pg_columns == sqlite_columns, (
        "tables/columns differ between the backends' migrations: "
        f"only SQLite: { {t: c - pg_columns.get(t, set()) for t, c in sqlite_columns.items()} }; "
        f"only Postgres: { {t: c - sqlite_columns.get(t, set()) for t, c in pg_columns.items()} }")
    assert pg_indexes - POSTGRES_ONLY_INDEXES == sqlite_indexes


def test_snapshot_is_readable() -> None:
    """The snapshot lists each table's primary key (a guard against an empty snapshot)."""
    text = SNAPSHOT.read_text()
    tables = set(re.findall(r"^constraint (\w+)\.\w+_pkey:", text, re.M))
    assert {"events", "runs", "memos", "queue", "waits", "apps"} <= tables, tables
