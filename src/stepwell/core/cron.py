"""Cron triggers: parsing ``"TZ=Europe/Paris 0 12 * * 5"`` and computing the next fire time.

Evaluation is delegated to ``cronsim`` (Debian-cron compatible, including its DST rules); this
module only adds what cronsim leaves to the caller: the ``TZ=`` / ``CRON_TZ=`` prefix accepted by
Inngest, the ``@daily``-style macros, zone lookup, conversion to and from epoch milliseconds, and
error messages that say which expression or zone is wrong.
"""

from __future__ import annotations

import datetime
import zoneinfo
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

__all__ = ["CronError", "CronSchedule", "parse_cron"]


class CronError(ValueError):
    """A cron trigger's expression or time zone is invalid.

    A ``ValueError`` so that function-definition validation can catch it alongside other
    configuration errors.
    """


# cronsim does not expand macros, so map the usual Vixie-cron ones to their expressions.
# "@reboot" is deliberately absent: stepwell has no notion of a machine boot.
_MACROS: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TZ_PREFIXES = ("CRON_TZ=", "TZ=")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# A fire time is always a whole second, so one call of the iterator almost always suffices;
# the bound only protects against looping forever if cronsim misbehaves around DST.
_MAX_ITERATIONS = 1_000


def _expand(expression: str) -> str:
    """Normalise whitespace and expand a macro, so equal schedules compare equal."""
    text = " ".join(expression.split())
    return _MACROS.get(text.lower(), text)


def _zone(tz: str) -> datetime.tzinfo:
    """Resolve an IANA zone name.

    ``"UTC"`` maps to ``datetime.UTC`` because cronsim skips its local-time (DST) handling only
    for that exact object; for a ``ZoneInfo("UTC")`` the result would be the same, just slower.
    """
    if tz == "UTC":
        return datetime.UTC
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # ZoneInfoNotFoundError for unknown names, ValueError for malformed keys ("../x",
        # "/abs", non-TZif files), OSError for directories such as "Europe".
        raise CronError(
            f"unknown time zone {tz!r} in cron trigger: expected an IANA zone name "
            'such as "UTC", "Europe/Paris" or "America/New_York"'
        ) from None


def _check_expression(expression: str, zone: datetime.tzinfo) -> None:
    if not expression:
        raise CronError(
            'empty cron expression: expected five fields such as "0 12 * * 5" '
            f"or one of {', '.join(_MACROS)}"
        )
    if expression.startswith("@"):
        raise CronError(
            f"invalid cron expression {expression!r}: unknown macro; "
            f"allowed macros are {', '.join(_MACROS)}"
        )
    fields = expression.split()
    if len(fields) == 6 and not (fields[0].isdigit() and int(fields[0]) < 60):
        # Five fields fire at most once a minute; a seconds field may pick one second of it.
        raise CronError(
            f"invalid cron expression {expression!r}: it fires more than once a minute; "
            "the shortest interval is one minute (a sixth, leading seconds field may only be "
            'one second, e.g. "30 * * * * *")'
        )
    try:
        # Computing one fire time, not just constructing, also catches expressions cronsim
        # accepts syntactically but that never fire (it gives up after 50 years).
        next(CronSim(expression, _EPOCH.astimezone(zone)))
    except StopIteration:
        raise CronError(
            f"invalid cron expression {expression!r}: it never fires; "
            'expected a schedule that matches some date, such as "0 12 * * 5"'
        ) from None
    except CronSimError as exc:
        raise CronError(
            f"invalid cron expression {expression!r}: {exc}; expected five fields "
            '"minute hour day-of-month month day-of-week" such as "0 12 * * 5"'
        ) from None


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron schedule in a time zone.

    Validation happens in ``__post_init__`` so that any instance, however it was built, can
    compute fire times: a bad trigger is reported when the function is defined, never at the
    moment the scheduler tries to use it. Macros are stored expanded (``"@daily"`` becomes
    ``"0 0 * * *"``).
    """

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise CronError(
                f"invalid cron expression {self.expression!r}: expected a string "
                'such as "0 12 * * 5"'
            )
        if not isinstance(self.tz, str):
            raise CronError(
                f"invalid time zone {self.tz!r} in cron trigger: expected an IANA zone name "
                'such as "UTC" or "Europe/Paris"'
            )
        expression = _expand(self.expression)
        object.__setattr__(self, "expression", expression)
        _check_expression(expression, _zone(self.tz))

    def next_after(self, after_ms: int) -> int:
        """Return the first fire time strictly after ``after_ms`` (UTC epoch ms).

        "Strictly" lets the scheduler pass the fire time it just handled and get the next one,
        without a fire being enqueued twice. Wall-clock fields are matched in ``tz``; on DST
        changes cronsim follows Debian cron (a fire in a skipped hour runs right after the
        jump, a fire in a repeated hour runs once).
        """
        zone = _zone(self.tz)
        start = (_EPOCH + datetime.timedelta(milliseconds=after_ms)).astimezone(zone)
        iterator = CronSim(self.expression, start)
        for _ in range(_MAX_ITERATIONS):
            try:
                fire: datetime.datetime = next(iterator)
            except StopIteration:
                raise CronError(
                    f"cron expression {self.expression!r} has no fire time within 50 years "
                    f"after {start.isoformat()}"
                ) from None
            fire_ms = (fire - _EPOCH) // datetime.timedelta(milliseconds=1)
            # cronsim works on local wall-clock time for fixed-time jobs in a DST zone; in the
            # repeated hour of a fall-back it can return the first occurrence of a wall time
            # that is earlier, in absolute terms, than ``start``. Skip such results.
            if fire_ms > after_ms:
                return fire_ms
        raise CronError(  # pragma: no cover - defensive, cronsim always makes progress
            f"cron expression {self.expression!r} did not produce a fire time after "
            f"{start.isoformat()}"
        )


def parse_cron(text: str) -> CronSchedule:
    """Parse a cron trigger as users write it for Inngest.

    Accepts an optional ``TZ=<zone>`` or ``CRON_TZ=<zone>`` prefix (default UTC), followed by a
    five-field expression (six fields, with seconds first, are passed through to cronsim) or a
    macro such as ``@daily``.
    """
    if not isinstance(text, str):
        raise CronError(
            f"invalid cron trigger {text!r}: expected a string such as "
            '"0 12 * * 5" or "TZ=Europe/Paris 0 12 * * 5"'
        )
    stripped = text.strip()
    tz = "UTC"
    for prefix in _TZ_PREFIXES:
        if stripped.startswith(prefix):
            zone_and_rest = stripped[len(prefix) :].split(None, 1)
            if not zone_and_rest or stripped[len(prefix)].isspace():
                raise CronError(
                    f"invalid cron trigger {text!r}: {prefix} needs a zone name, "
                    'e.g. "TZ=Europe/Paris 0 12 * * 5"'
                )
            tz = zone_and_rest[0]
            stripped = zone_and_rest[1] if len(zone_and_rest) > 1 else ""
            break
    return CronSchedule(stripped, tz)
