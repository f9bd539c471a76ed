"""Retry backoff policy: how long to wait before retrying a failed step or run.

The schedule is Inngest's, so functions ported from Inngest retry on the same timetable. Jitter
spreads out retries of many runs that failed together (e.g. when a dependency went down), so
they do not all hit it again in the same instant.

The jitter is derived from a hash rather than a random generator: the same run, step and attempt
always get the same delay. That keeps the core pure (no hidden RNG state), makes tests on a
virtual clock reproducible, and means a worker that recomputes a delay after a crash gets the
same answer as the one that died.
"""

from __future__ import annotations

import hashlib

__all__ = ["BACKOFF_SCHEDULE_MS", "MAX_JITTER_MS", "retry_delay_ms"]

BACKOFF_SCHEDULE_MS: tuple[int, ...] = (
    15_000,  # 15s
    30_000,  # 30s
    60_000,  # 1m
    120_000,  # 2m
    300_000,  # 5m
    600_000,  # 10m
    1_200_000,  # 20m
    2_400_000,  # 40m
    3_600_000,  # 1h
    7_200_000,  # 2h, then stays at 2h
)
"""Base delay before retry *n* is ``BACKOFF_SCHEDULE_MS[n - 1]``, capped at the last entry."""

MAX_JITTER_MS = 30_000
"""Jitter added to every delay lies in ``[0, MAX_JITTER_MS)``."""


def _jitter_ms(seed: str, failures: int) -> int:
    digest = hashlib.sha1(f"{seed}:{failures}".encode(), usedforsecurity=False).digest()
    # 64 bits modulo 30 000: the bias is on the order of 1e-15, far below anything observable.
    return int.from_bytes(digest[:8], "big") % MAX_JITTER_MS


def retry_delay_ms(failures: int, *, seed: str) -> int:
    """Return the delay in milliseconds before the next attempt.

    ``failures`` is how many attempts have failed so far (1 before the first retry). ``seed``
    should identify what is being retried, e.g. ``f"{run_id}:{step_id}"``, so that different
    runs get different jitter while any one of them is deterministic.
    """
    if isinstance(failures, bool) or not isinstance(failures, int):
        raise ValueError(
            f"invalid failures {failures!r}: expected an int >= 1 "
            "(the number of attempts that have failed so far)"
        )
    if failures < 1:
        raise ValueError(
            f"invalid failures {failures!r}: must be >= 1 "
            "(the number of attempts that have failed so far; 1 for the first retry)"
        )
    if not isinstance(seed, str):
        raise ValueError(
            f"invalid seed {seed!r}: expected a str identifying the run/step being retried"
        )
    base = BACKOFF_SCHEDULE_MS[min(failures, len(BACKOFF_SCHEDULE_MS)) - 1]
    return base + _jitter_ms(seed, failures)
