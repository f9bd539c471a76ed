"""The `store` fixture: a backend opened for `db_url`, through the storage interface only.

The contract suite (`test_tx_contract_*.py`) is written against `Store`/`Tx` and nothing else,
so a new backend is done when `open_store` returns it for its URL and the suite passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stepwell.store import open_store
from stepwell.store.base import Store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = open_store(db_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
