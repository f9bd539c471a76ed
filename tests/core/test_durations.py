from __future__ import annotations

import datetime
from typing import Any

import pytest

from stepwell.core.durations import (
    DurationError,
    format_duration,
    parse_duration_ms,
    parse_timestamp_ms,
)

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

HINT = 'expected a duration such as "500ms", "30s", "1m", "1h30m", "7d"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500ms", 500),
        ("30s", 30 * SECOND),
        ("1m", MINUTE),
        ("1h", HOUR),
        ("1h30m", HOUR + 30 * MINUTE),
        ("7d", 7 * DAY),
        ("1w", 7 * DAY),
        ("2w3d", 17 * DAY),
        ("1.5h", 90 * MINUTE),
        ("2h30m10s", 2 * HOUR + 30 * MINUTE + 10 * SECOND),
        ("1m500ms", MINUTE + 500),
        ("1.1s", 1_100),  # exact decimal arithmetic, not 1100.0000000000002
        (".5s", 500),
        ("1.s", 1_000),
        ("0s", 0),
        ("0ms", 0),
        ("  30s\n", 30 * SECOND),
        ("0.0005s", 1),  # half rounds up
        ("0.0015s", 2),  # ...not to even
        ("0.0004s", 0),
        ("365d", 365 * DAY),
        ("1h1h", 2 * HOUR),  # Go accepts repeated units; so do we
        (0, 0),
        (1, SECOND),
        (90, 90 * SECOND),
        (0.5, 500),
        (0.1, 100),
        (1.0006, 1_001),
        (1.0005, 1_000),  # the float is 1.000499999..., exact conversion rounds down
        (-0.0, 0),
        (datetime.timedelta(0), 0),
        (datetime.timedelta(minutes=1, seconds=30), 90 * SECOND),
        (datetime.timedelta(days=2, milliseconds=7), 2 * DAY + 7),
        (datetime.timedelta(microseconds=1_500), 2),
        (datetime.timedelta(microseconds=1_499), 1),
    ],
)
def test_parse_duration_ms_valid(value: Any, expected: int) -> None:
    result = parse_duration_ms(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty string"),
        ("   ", "empty string"),
        ("10x", "unknown unit 'x'"),
        ("10", "missing unit after '10'"),
        ("0", "missing unit after '0'"),
        ("1h30", "missing unit after '30'"),
        ("1.5.5h", "missing unit after '1.5'"),
        ("abc", "expected a number at 'abc'"),
        ("h", "expected a number at 'h'"),
        ("1h-30m", "expected a number at '-30m'"),
        ("1h 30m", "no spaces allowed between parts"),
        ("-5s", "must not be negative"),
        ("+5s", "unexpected sign '+'"),
        ("1e3s", "unknown unit 'e'"),
        ("5us", "unknown unit 'us'"),
        ("5µs", "unknown unit 'µs'"),
        ("5ns", "unknown unit 'ns'"),
        ("1M", "unknown unit 'M'"),  # months have no fixed length
        ("1H", "unknown unit 'H'"),
        ("1y", "unknown unit 'y'"),
        ("1sec", "unknown unit 'sec'"),
        ("1hm", "unknown unit 'hm'"),
        ("5s!", "expected a number at '!'"),
        ("nan", "expected a number at 'nan'"),
        ("inf", "expected a number at 'inf'"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (float("nan"), "must be a finite number"),
        (float("inf"), "must be a finite number"),
        (float("-inf"), "must be a finite number"),
        (True, "a bool is not a duration"),
        (False, "a bool is not a duration"),
        (datetime.timedelta(seconds=-1), "must not be negative"),
        (None, "unsupported type NoneType"),
        (b"30s", "unsupported type bytes"),
        ([30], "unsupported type list"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "unsupported type datetime"),
    ],
)
def test_parse_duration_ms_invalid(value: Any, reason: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration_ms(value)
    message = str(info.value)
    assert message.startswith(f"invalid duration {value!r}: ")
    assert reason in message
    assert HINT in message
    assert isinstance(info.value, ValueError)


def test_parse_duration_ms_error_names_the_option() -> None:
    with pytest.raises(DurationError, match=r"^invalid rate_limit\.period '10x': "):
        parse_duration_ms("10x", what="rate_limit.period")


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (0, "0s"),
        (1, "1ms"),
        (500, "500ms"),
        (1_000, "1s"),
        (1_500, "1s500ms"),
        (90_000, "1m30s"),
        (HOUR, "1h"),
        (HOUR + 30 * MINUTE, "1h30m"),
        (2 * HOUR + 30 * MINUTE + 10 * SECOND, "2h30m10s"),
        (7 * DAY, "7d"),
        (14 * DAY, "14d"),
        (DAY + HOUR + MINUTE + SECOND + 1, "1d1h1m1s1ms"),
        (DAY + 5, "1d5ms"),
    ],
)
def test_format_duration(ms: int, expected: str) -> None:
    assert format_duration(ms) == expected
    assert parse_duration_ms(expected) == ms


@pytest.mark.parametrize(
    "ms",
    [0, 1, 999, 1_000, 59_999, 60_001, 3_599_999, 86_400_001, 123_456_789_012, 10**15],
)
def test_format_duration_round_trips(ms: int) -> None:
    assert parse_duration_ms(format_duration(ms)) == ms


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "must not be negative"),
        (1.5, "expected an int number of milliseconds"),
        (True, "expected an int number of milliseconds"),
        ("1s", "expected an int number of milliseconds"),
    ],
)
def test_format_duration_invalid(value: Any, reason: str) -> None:
    with pytest.raises(DurationError, match=reason):
        format_duration(value)


PARIS = datetime.timezone(datetime.timedelta(hours=2))
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.UTC), T0),
        (datetime.datetime(2024, 5, 1, 14, tzinfo=PARIS), T0),
        (datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC), 0),
        (datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=datetime.UTC), -1_000),
        (datetime.datetime(2024, 5, 1, 12, 0, 0, 123_000, tzinfo=datetime.UTC), T0 + 123),
        # sub-millisecond parts round up, so a timer never fires before the requested instant
        (datetime.datetime(2024, 5, 1, 12, 0, 0, 123_001, tzinfo=datetime.UTC), T0 + 124),
        (datetime.datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=datetime.UTC), T0 + 1_000),
        (datetime.datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=datetime.UTC), 0),
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T12:00:00+00:00", T0),
        ("2024-05-01T14:00:00+02:00", T0),
        ("2024-05-01 12:00:00Z", T0),
        ("  2024-05-01T12:00:00Z  ", T0),
        ("2024-05-01T12:00:00.250Z", T0 + 250),
        ("2024-05-01T12:00:00.2501Z", T0 + 251),
        (T0, T0),
        (0, 0),
        (-5, -5),
        (float(T0), T0),
        (T0 + 0.25, T0 + 1),
    ],
)
def test_parse_timestamp_ms_valid(value: Any, expected: int) -> None:
    result = parse_timestamp_ms(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (datetime.datetime(2024, 5, 1, 12), "datetime must be timezone-aware"),
        ("2024-05-01T12:00:00", "ISO-8601 string must be timezone-aware"),
        ("2024-05-01", "ISO-8601 string must be timezone-aware"),
        ("", "empty string"),
        ("   ", "empty string"),
        ("tomorrow", "not an ISO-8601 date-time"),
        ("2024-13-01T00:00:00Z", "not an ISO-8601 date-time"),
        ("1714564800000", "not an ISO-8601 date-time"),
        (True, "a bool is not a time"),
        (False, "a bool is not a time"),
        (float("nan"), "must be a finite number"),
        (float("inf"), "must be a finite number"),
        (None, "unsupported type NoneType"),
        (datetime.date(2024, 5, 1), "unsupported type date"),
        (datetime.timedelta(seconds=1), "unsupported type timedelta"),
    ],
)
def test_parse_timestamp_ms_invalid(value: Any, reason: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_timestamp_ms(value)
    message = str(info.value)
    assert message.startswith(f"invalid time {value!r}: ")
    assert reason in message
    assert "expected a timezone-aware datetime" in message


def test_parse_timestamp_ms_error_names_the_option() -> None:
    with pytest.raises(DurationError, match=r"^invalid sleep_until 'soon': "):
        parse_timestamp_ms("soon", what="sleep_until")
