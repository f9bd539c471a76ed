"""Shared fixtures: a real SQLite file per test and a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import stepwell
from stepwell.testing import VirtualClock

EngineFactory = Callable[..., Any]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stepwell.db'}"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1_767_225_600_000)  # 2026-01-01T00:00:00Z


@pytest.fixture
def make_engine(db_url: str, clock: VirtualClock) -> EngineFactory:
    """`async with make_engine(app) as engine:` a started engine on a real SQLite file."""

    @asynccontextmanager
    async def factory(*apps: stepwell.App, **kwargs: Any) -> AsyncIterator[stepwell.Engine]:
        kwargs.setdefault("db", db_url)
        kwargs.setdefault("clock", clock)
        engine = stepwell.Engine(*apps, **kwargs)
        async with engine:
            yield engine

    return factory
