"""The server's persistent secret: what signs approval URLs and stream subscription tokens,
shared by every process on one database (a worker or an app signs, the server that serves
`POST /v1/approvals/{token}` or `GET /v1/streams/{channel}` verifies).

It is a flow-control entry without expiry (`secret:server`), which retention never prunes; it
is created once, and every process reads back the value that was stored (so two starting at
once agree). Deleting the row revokes every token and link handed out so far.
"""

from __future__ import annotations

import secrets as _random
from typing import Any
from weakref import WeakKeyDictionary

from stepwell.store.base import Tx

_KEY = "secret:server"
_cache: WeakKeyDictionary[Any, bytes] = WeakKeyDictionary()


async def server_secret(host: Any) -> bytes:
    """The secret, created on first use (`host`: the worker: `read` and `commit` scripts)."""
    cached = _cache.get(host)
    if cached is not None:
        return cached
    fresh = _random.token_hex(32)

    def create(tx: Tx, *_: Any) -> None:
        if tx.get_flow(_KEY) is None:
            tx.put_flow(_KEY, text=fresh)

    def read(tx: Tx) -> str | None:
        found = tx.get_flow(_KEY)
        return None if found is None else found[0]

    text = await host.read(read)
    if text is None:
        await host.commit(create)
        text = await host.read(read)
    assert text is not None
    secret = _cache[host] = bytes.fromhex(text)
    return secret
