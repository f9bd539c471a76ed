from __future__ import annotations

import dataclasses
import datetime
import itertools
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from stepwell.core.cron import CronError, CronSchedule, parse_cron

UTC = datetime.UTC
PARIS = ZoneInfo("Europe/Paris")


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    moment = datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000


def to_utc(ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(milliseconds=ms)


@pytest.mark.parametrize(
    ("text", "expression", "tz"),
    [
        ("0 12 * * 5", "0 12 * * 5", "UTC"),
        ("  0   12 *  * 5  ", "0 12 * * 5", "UTC"),
        ("TZ=Europe/Paris 0 12 * * 5", "0 12 * * 5", "Europe/Paris"),
        (
            "CRON_TZ=America/New_York */15 9-17 * * MON-FRI",
            "*/15 9-17 * * MON-FRI",
            "America/New_York",
        ),
        ("TZ=UTC 0 0 1 * *", "0 0 1 * *", "UTC"),
        ("@hourly", "0 * * * *", "UTC"),
        ("@daily", "0 0 * * *", "UTC"),
        ("@midnight", "0 0 * * *", "UTC"),
        ("@weekly", "0 0 * * 0", "UTC"),
        ("@monthly", "0 0 1 * *", "UTC"),
        ("@yearly", "0 0 1 1 *", "UTC"),
        ("@annually", "0 0 1 1 *", "UTC"),
        ("@DAILY", "0 0 * * *", "UTC"),
        ("TZ=Asia/Tokyo @daily", "0 0 * * *", "Asia/Tokyo"),
        ("30 0 12 * * 5", "30 0 12 * * 5", "UTC"),  # six fields: seconds first (cronsim)
    ],
)
def test_parse_cron_valid(text: str, expression: str, tz: str) -> None:
    assert parse_cron(text) == CronSchedule(expression, tz)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["empty cron expression"]),
        ("   ", ["empty cron expression"]),
        ("TZ=Europe/Paris", ["empty cron expression"]),
        ("* * *", ["'* * *'", "Wrong number of fields"]),
        ("0 12 * * 5 2024", ["'0 12 * * 5 2024'", "Bad day-of-week"]),
        ("61 * * * *", ["'61 * * * *'", "Bad minute"]),
        ("0 24 * * *", ["'0 24 * * *'", "Bad hour"]),
        ("0 0 32 * *", ["Bad day-of-month"]),
        ("0 0 30 2 *", ["'0 0 30 2 *'", "Bad day-of-month"]),
        ("0 0 * 13 *", ["Bad month"]),
        ("0 0 * * 8", ["Bad day-of-week"]),
        ("0 0 * * FUN", ["Bad day-of-week"]),
        ("*/0 * * * *", ["Bad minute"]),
        ("5-1 * * * *", ["Bad minute"]),
        ("a b c d e", ["'a b c d e'", "Bad minute"]),
        ("@reboot", ["'@reboot'", "unknown macro", "@daily"]),
        ("@every 5m", ["'@every 5m'", "unknown macro"]),
        ("TZ=Mars/Olympus 0 12 * * 5", ["unknown time zone 'Mars/Olympus'", "Europe/Paris"]),
        ("CRON_TZ=Nope 0 12 * * 5", ["unknown time zone 'Nope'"]),
        ("TZ=utc 0 12 * * 5", ["unknown time zone 'utc'"]),  # IANA names are case-sensitive
        ("TZ=Europe 0 12 * * 5", ["unknown time zone 'Europe'"]),  # a directory, not a zone
        ("TZ=../etc 0 12 * * 5", ["unknown time zone '../etc'"]),
        ("TZ=/etc/localtime 0 12 * * 5", ["unknown time zone '/etc/localtime'"]),
        ("TZ= 0 12 * * 5", ["TZ= needs a zone name"]),
        ("TZ=", ["TZ= needs a zone name"]),
        ("CRON_TZ=", ["CRON_TZ= needs a zone name"]),
    ],
)
def test_parse_cron_invalid(text: str, fragments: list[str]) -> None:
    with pytest.raises(CronError) as info:
        parse_cron(text)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 5, b"0 12 * * 5"])
def test_parse_cron_rejects_non_strings(value: Any) -> None:
    with pytest.raises(CronError, match="expected a string"):
        parse_cron(value)


@pytest.mark.parametrize(
    ("expression", "tz", "fragment"),
    [
        ("bad", "UTC", "invalid cron expression 'bad'"),
        ("0 12 * * 5", "Nowhere/Land", "unknown time zone 'Nowhere/Land'"),
        (None, "UTC", "expected a string"),
        ("0 12 * * 5", None, "expected an IANA zone name"),
    ],
)
def test_cron_schedule_validates_on_construction(expression: Any, tz: Any, fragment: str) -> None:
    with pytest.raises(CronError, match=fragment):
        CronSchedule(expression, tz)


def test_cron_schedule_defaults_and_is_frozen() -> None:
    schedule = CronSchedule("@daily")
    assert schedule == CronSchedule("0 0 * * *", "UTC")
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.tz = "Europe/Paris"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        # 2024-05-01 is a Wednesday; the next Friday is 2024-05-03
        ("0 12 * * 5", utc_ms(2024, 5, 1, 0, 0), utc_ms(2024, 5, 3, 12, 0)),
        ("0 12 * * 5", utc_ms(2024, 5, 3, 11, 59, 59), utc_ms(2024, 5, 3, 12, 0)),
        # strictly after: a fire time itself yields the following one
        ("0 12 * * 5", utc_ms(2024, 5, 3, 12, 0), utc_ms(2024, 5, 10, 12, 0)),
        ("0 12 * * 5", utc_ms(2024, 5, 3, 12, 0) + 1, utc_ms(2024, 5, 10, 12, 0)),
        ("0 12 * * 5", utc_ms(2024, 5, 3, 12, 0) - 1, utc_ms(2024, 5, 3, 12, 0)),
        ("* * * * *", utc_ms(2024, 5, 1, 0, 0), utc_ms(2024, 5, 1, 0, 1)),
        ("* * * * *", utc_ms(2024, 5, 1, 0, 0) + 59_999, utc_ms(2024, 5, 1, 0, 1)),
        ("*/15 * * * *", utc_ms(2024, 5, 1, 0, 7), utc_ms(2024, 5, 1, 0, 15)),
        ("@hourly", utc_ms(2024, 5, 1, 10, 30), utc_ms(2024, 5, 1, 11, 0)),
        ("@daily", utc_ms(2024, 5, 1, 10, 30), utc_ms(2024, 5, 2, 0, 0)),
        ("@weekly", utc_ms(2024, 5, 1, 10, 30), utc_ms(2024, 5, 5, 0, 0)),  # Sunday
        ("@monthly", utc_ms(2024, 5, 1, 10, 30), utc_ms(2024, 6, 1, 0, 0)),
        ("@yearly", utc_ms(2024, 5, 1, 10, 30), utc_ms(2025, 1, 1, 0, 0)),
        ("0 0 29 2 *", utc_ms(2024, 3, 1, 0, 0), utc_ms(2028, 2, 29, 0, 0)),
        ("0 0 L * *", utc_ms(2024, 2, 1, 0, 0), utc_ms(2024, 2, 29, 0, 0)),
        ("30 0 12 * * 5", utc_ms(2024, 5, 1, 0, 0), utc_ms(2024, 5, 3, 12, 0, 30)),
        # zones: noon in Tokyo (UTC+9, no DST) is 03:00 UTC
        ("TZ=Asia/Tokyo 0 12 * * *", utc_ms(2024, 5, 1, 0, 0), utc_ms(2024, 5, 1, 3, 0)),
        ("TZ=Asia/Tokyo 0 12 * * *", utc_ms(2024, 5, 1, 3, 0), utc_ms(2024, 5, 2, 3, 0)),
        ("TZ=America/New_York 0 9 * * *", utc_ms(2024, 1, 10, 0, 0), utc_ms(2024, 1, 10, 14, 0)),
        ("TZ=America/New_York 0 9 * * *", utc_ms(2024, 7, 10, 0, 0), utc_ms(2024, 7, 10, 13, 0)),
        ("CRON_TZ=Europe/Paris 0 12 * * 5", utc_ms(2024, 5, 1, 0, 0), utc_ms(2024, 5, 3, 10, 0)),
    ],
)
def test_next_after(text: str, after: int, expected: int) -> None:
    result = parse_cron(text).next_after(after)
    assert to_utc(result) == to_utc(expected)
    assert type(result) is int


def test_next_after_fires_at_noon_paris_time_across_both_dst_changes() -> None:
    """Europe/Paris switches to CEST on 2024-03-31 and back to CET on 2024-10-27.

    Noon local time is 11:00 UTC in winter and 10:00 UTC in summer; every fire must be at
    12:00 on the wall clock, never at a fixed UTC hour.
    """
    schedule = parse_cron("TZ=Europe/Paris 0 12 * * 5")
    fires: list[datetime.datetime] = []
    after = utc_ms(2024, 3, 20, 0, 0)
    for _ in range(3):
        after = schedule.next_after(after)
        fires.append(to_utc(after))
    after = utc_ms(2024, 10, 16, 0, 0)
    for _ in range(3):
        after = schedule.next_after(after)
        fires.append(to_utc(after))

    assert fires == [
        datetime.datetime(2024, 3, 22, 11, tzinfo=UTC),  # CET, +01:00
        datetime.datetime(2024, 3, 29, 11, tzinfo=UTC),  # CET, last Friday before the switch
        datetime.datetime(2024, 4, 5, 10, tzinfo=UTC),  # CEST, +02:00
        datetime.datetime(2024, 10, 18, 10, tzinfo=UTC),  # CEST
        datetime.datetime(2024, 10, 25, 10, tzinfo=UTC),  # CEST, last Friday before the switch
        datetime.datetime(2024, 11, 1, 11, tzinfo=UTC),  # CET again
    ]
    for fire in fires:
        local = fire.astimezone(PARIS)
        assert (local.weekday(), local.hour, local.minute) == (4, 12, 0)


def test_daily_paris_schedule_keeps_local_time_every_day_over_a_year() -> None:
    schedule = parse_cron("TZ=Europe/Paris 0 12 * * *")
    after = utc_ms(2024, 1, 1, 0, 0)
    offsets: set[datetime.timedelta | None] = set()
    for _ in range(366):
        after = schedule.next_after(after)
        local = to_utc(after).astimezone(PARIS)
        assert (local.hour, local.minute, local.second) == (12, 0, 0)
        offsets.add(local.utcoffset())
    assert offsets == {datetime.timedelta(hours=1), datetime.timedelta(hours=2)}


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        # 02:30 does not exist on 2024-03-31 in Paris (02:00 -> 03:00): Debian cron runs the
        # job right after the jump, at 03:00 CEST = 01:00 UTC.
        (utc_ms(2024, 3, 30, 23, 0), utc_ms(2024, 3, 31, 1, 0)),
        # 02:30 happens twice on 2024-10-27 (03:00 CEST -> 02:00 CET): the job runs once, at
        # the first occurrence (02:30 CEST = 00:30 UTC)...
        (utc_ms(2024, 10, 26, 23, 0), utc_ms(2024, 10, 27, 0, 30)),
        # ...and not again at the second occurrence (02:30 CET = 01:30 UTC).
        (utc_ms(2024, 10, 27, 0, 30), utc_ms(2024, 10, 28, 1, 30)),
        # From inside the repeated hour, after the first 02:30 has passed, cronsim's local-time
        # arithmetic would offer 02:30 CEST again, which is in the past: it must be skipped.
        (utc_ms(2024, 10, 27, 1, 10), utc_ms(2024, 10, 28, 1, 30)),
    ],
)
def test_next_after_at_fixed_time_inside_dst_transitions(after: int, expected: int) -> None:
    result = parse_cron("TZ=Europe/Paris 30 2 * * *").next_after(after)
    assert to_utc(result) == to_utc(expected)
    assert result > after


def test_every_thirty_minutes_is_regular_in_utc_across_fall_back() -> None:
    """Interval jobs follow absolute time through the repeated hour (no gap, no double)."""
    schedule = parse_cron("TZ=Europe/Paris */30 * * * *")
    after = utc_ms(2024, 10, 26, 23, 45)
    fires: list[int] = []
    for _ in range(8):
        after = schedule.next_after(after)
        fires.append(after)
    assert [b - a for a, b in itertools.pairwise(fires)] == [30 * 60_000] * 7
    assert fires[0] == utc_ms(2024, 10, 27, 0, 0)


def test_next_after_handles_times_before_the_epoch() -> None:
    assert parse_cron("@yearly").next_after(-1) == 0
