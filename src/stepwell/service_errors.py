"""What the service layer says when a request is wrong, and how it reads a request's values.

Failures are `ServiceError` subclasses carrying the HTTP status a transport should use; the
parsers turn the values of query strings and bodies (times, statuses, limits) into ours or raise
`InvalidInput` naming what is allowed. Nothing here knows about HTTP itself.
"""

from __future__ import annotations

import datetime
import math
from typing import Final

from stepwell.core.models import MAX_EVENT_TS_MS, RunStatus
from stepwell.service_views import DERIVED_STATUSES, STATUS_NAMES

MAX_LIMIT: Final = 1000


class ServiceError(Exception):
    """A request the service cannot satisfy; `status` is the HTTP status that describes it."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    status = 400


class Unreachable(ServiceError):
    status = 502


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooEarly(ServiceError):
    """The request is right but came before the state it needs (retry in a moment)."""

    status = 425


class SyncRefused(InvalidInput):
    """An SDK app's registration was refused: retrying the same app cannot succeed."""


class Forbidden(ServiceError):
    status = 403


class PartialSend(InvalidInput):
    """A batch whose events before `ids`' end were stored and the rest refused."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


def parse_time(value: object, field: str) -> int:
    """An RFC 3339 string or epoch ms, as epoch ms (times in request bodies), between 1970
    and the end of year 9999 (what every column and `iso` can hold)."""
    ms: int | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) or math.isfinite(value):
            ms = int(value)
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            ms = int(moment.timestamp() * 1000)
    if ms is None:
        raise InvalidInput(f"'{field}' must be an RFC 3339 time such as "
                           "2026-01-01T00:00:00Z or epoch milliseconds")
    if not 0 <= ms <= MAX_EVENT_TS_MS:
        raise InvalidInput(f"'{field}' is out of range: epoch milliseconds from 0 to "
                           f"{MAX_EVENT_TS_MS} (year 9999) are accepted, got {value!r}")
    return ms


def parse_status(value: str) -> RunStatus:
    """A run status filter, accepting our names and Inngest's capitalised ones."""
    lowered = value.strip().lower()
    for status in STATUS_NAMES:
        if status == lowered:
            return status
    raise InvalidInput(f"unknown run status {value!r}; use one of "
                       f"{', '.join([*STATUS_NAMES, *DERIVED_STATUSES])}")


def parse_limit(value: object, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(str(value))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"'limit' must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return limit
