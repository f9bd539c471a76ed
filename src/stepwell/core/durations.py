"""Parsing and formatting of durations and points in time.

Every user-facing option that takes a duration (``step.sleep``, timeouts, rate-limit periods,
debounce windows, ``RetryAfterError``...) funnels through :func:`parse_duration_ms`, so that the
accepted spellings and the error messages are the same everywhere. Internally stepwell only deals
in integer UTC epoch milliseconds, which compare and store identically in SQLite and Postgres;
this module is the single place where friendlier inputs are turned into those integers.

Arithmetic is done on exact fractions and rounded once at the end, so ``"1.1s"`` is exactly
1100 ms rather than whatever a binary float happens to produce.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from fractions import Fraction

__all__ = [
    "DurationError",
    "format_duration",
    "parse_duration_ms",
    "parse_timestamp_ms",
]


class DurationError(ValueError):
    """A duration or timestamp given by the user could not be understood.

    A ``ValueError`` subclass so that callers validating whole configurations can catch one
    familiar type, while still being able to tell duration problems apart.
    """


_DURATION_HINT = (
    'expected a duration such as "500ms", "30s", "1m", "1h30m", "7d", '
    "a timedelta, or seconds as a number"
)
_TIMESTAMP_HINT = (
    "expected a timezone-aware datetime, an ISO-8601 string with an offset "
    '(e.g. "2024-05-01T12:00:00Z"), or epoch milliseconds as a number'
)

# Milliseconds per unit. The unit set is that of Inngest's Go duration strings plus days and
# weeks; months and years are deliberately absent because their length is not fixed.
_UNIT_MS: dict[str, int] = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
}
_ALLOWED_UNITS = ", ".join(_UNIT_MS)

_NUMBER_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+")
# Scan any run of letters (not just known units) so that "10x" reports the unknown unit "x"
# instead of a vaguer "garbage at position 2".
_UNIT_RE = re.compile(r"[^\W\d_]+")

# Largest first; weeks are left out on purpose so "14d" is not rendered as "2w".
_FORMAT_UNITS: tuple[tuple[str, int], ...] = (
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _round_half_up(value: Fraction) -> int:
    """Round to the nearest integer, halves away from zero for non-negative values.

    Used instead of ``round()`` because banker's rounding would make "0.0005s" zero but
    "0.0015s" two milliseconds, which is surprising for a user-facing unit conversion.
    """
    return math.floor(value + Fraction(1, 2))


def _duration_error(what: str, value: object, reason: str = "") -> DurationError:
    prefix = f"{reason}; " if reason else ""
    return DurationError(f"invalid {what} {value!r}: {prefix}{_DURATION_HINT}")


@functools.lru_cache(maxsize=512)
def _parse_duration_string(value: str, what: str) -> int:
    """Exact (fractions, no float rounding), hence slow-ish: cached, as handlers pass the same
    literal (`"1d"`) on every execution and every replay."""
    text = value.strip()
    if not text:
        raise _duration_error(what, value, "empty string")
    if text[0] in "+-":
        if text[0] == "-":
            raise _duration_error(what, value, "must not be negative")
        raise _duration_error(what, value, "unexpected sign '+'")

    total = Fraction(0)
    pos = 0
    while pos < len(text):
        number = _NUMBER_RE.match(text, pos)
        if number is None:
            if text[pos].isspace():
                raise _duration_error(what, value, "no spaces allowed between parts")
            raise _duration_error(what, value, f"expected a number at {text[pos:]!r}")
        pos = number.end()
        unit = _UNIT_RE.match(text, pos)
        if unit is None:
            raise _duration_error(
                what,
                value,
                f"missing unit after {number.group()!r} (allowed units: {_ALLOWED_UNITS})",
            )
        pos = unit.end()
        unit_ms = _UNIT_MS.get(unit.group())
        if unit_ms is None:
            raise _duration_error(
                what,
                value,
                f"unknown unit {unit.group()!r} (allowed units: {_ALLOWED_UNITS})",
            )
        total += Fraction(number.group()) * unit_ms
    return _round_half_up(total)


def parse_duration_ms(
    value: str | int | float | datetime.timedelta, *, what: str = "duration"
) -> int:
    """Turn a user-supplied duration into a non-negative number of milliseconds.

    Accepts Go/Inngest-style strings (``"1h30m"``, ``"1.5h"``, ``"500ms"``, plus ``d`` = 24h and
    ``w`` = 7d), a ``timedelta``, or a plain number meaning *seconds* (the unit of
    ``time.sleep`` and ``asyncio.sleep``, which is what Python users reach for). ``what`` names
    the option being parsed so the error points at it, e.g. ``what="rate_limit.period"``.

    Zero is allowed: whether a zero sleep or window makes sense is the caller's decision.
    ``bool`` is rejected even though it is an ``int``, because ``True`` as "one second" is
    always a bug.
    """
    if isinstance(value, bool):
        raise _duration_error(what, value, "a bool is not a duration")
    if isinstance(value, str):
        return _parse_duration_string(value, what)
    if isinstance(value, datetime.timedelta):
        if value < datetime.timedelta(0):
            raise _duration_error(what, value, "must not be negative")
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return _round_half_up(Fraction(micros, 1_000))
    if isinstance(value, int):
        if value < 0:
            raise _duration_error(what, value, "must not be negative")
        return value * 1_000
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _duration_error(what, value, "must be a finite number")
        if value < 0:
            raise _duration_error(what, value, "must not be negative")
        return _round_half_up(Fraction(value) * 1_000)
    raise _duration_error(what, value, f"unsupported type {type(value).__name__}")


def format_duration(ms: int) -> str:
    """Render milliseconds compactly (``90000`` -> ``"1m30s"``) for messages and the dashboard.

    The output always parses back to the same value with :func:`parse_duration_ms`, so a
    formatted duration can be pasted straight into configuration.
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise DurationError(f"invalid duration {ms!r}: expected an int number of milliseconds")
    if ms < 0:
        raise DurationError(f"invalid duration {ms!r}: milliseconds must not be negative")
    if ms == 0:
        return "0s"
    parts: list[str] = []
    remaining = ms
    for unit, size in _FORMAT_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _ceil_ms_from_datetime(value: datetime.datetime) -> int:
    delta = value - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return -((-micros) // 1_000)


def parse_timestamp_ms(value: datetime.datetime | str | int | float, *, what: str = "time") -> int:
    """Turn a user-supplied point in time into UTC epoch milliseconds.

    Naive datetimes (and ISO strings without an offset) are rejected rather than assumed to be
    UTC or local time: the engine may run on a machine in another zone than the user's, and
    guessing would silently shift a ``sleep_until`` by hours.

    Sub-millisecond parts are rounded *up*, so a timer set from the result never fires before
    the instant the user asked for. Numbers are epoch milliseconds (the engine's own unit, and
    JavaScript's ``Date.now()``), unlike durations where numbers are seconds.
    """
    if isinstance(value, bool):
        raise DurationError(f"invalid {what} {value!r}: a bool is not a time; {_TIMESTAMP_HINT}")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise DurationError(
                f"invalid {what} {value!r}: datetime must be timezone-aware "
                f"(e.g. tzinfo=datetime.timezone.utc); {_TIMESTAMP_HINT}"
            )
        return _ceil_ms_from_datetime(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise DurationError(f"invalid {what} {value!r}: empty string; {_TIMESTAMP_HINT}")
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise DurationError(
                f"invalid {what} {value!r}: not an ISO-8601 date-time; {_TIMESTAMP_HINT}"
            ) from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise DurationError(
                f"invalid {what} {value!r}: ISO-8601 string must be timezone-aware "
                f'(end it with "Z" or an offset such as "+02:00"); {_TIMESTAMP_HINT}'
            )
        return _ceil_ms_from_datetime(parsed)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DurationError(
                f"invalid {what} {value!r}: must be a finite number; {_TIMESTAMP_HINT}"
            )
        return math.ceil(Fraction(value))
    raise DurationError(
        f"invalid {what} {value!r}: unsupported type {type(value).__name__}; {_TIMESTAMP_HINT}"
    )
