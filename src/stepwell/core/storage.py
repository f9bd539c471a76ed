"""Failures of the database itself, as every layer sees them (issue 10.10).

They are not the request's fault and not a bug: the disk is full, another process holds the
write lock, the database is down. The store raises them (`StoreError` is one), the engine
defers the work they interrupted (nothing is lost: a transaction that failed wrote nothing),
and the HTTP server answers them with their own status instead of a generic 500, so a client
knows to retry and an operator knows what to fix. Defined here, in the pure core, because the
server may not import the store.
"""

from __future__ import annotations


class StorageFailure(RuntimeError):
    """The database cannot do this now; retrying later can succeed. Nothing was written."""

    http_status = 503
    retry_after_s: int | None = 5


class StorageFull(StorageFailure):
    """The disk holding the database (or its size limit) is full."""

    http_status = 507           # Insufficient Storage
    retry_after_s = 30


class StorageBusy(StorageFailure):
    """Another process held the database's write lock for longer than the store waits."""

    http_status = 503
    retry_after_s = 5
