from __future__ import annotations

from typing import Any

import pytest

from stepwell.core.backoff import BACKOFF_SCHEDULE_MS, MAX_JITTER_MS, retry_delay_ms

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def test_schedule_is_inngests_table() -> None:
    assert BACKOFF_SCHEDULE_MS == (
        15 * SECOND,
        30 * SECOND,
        1 * MINUTE,
        2 * MINUTE,
        5 * MINUTE,
        10 * MINUTE,
        20 * MINUTE,
        40 * MINUTE,
        1 * HOUR,
        2 * HOUR,
    )
    assert MAX_JITTER_MS == 30 * SECOND


@pytest.mark.parametrize(
    ("failures", "base"),
    [
        (1, 15 * SECOND),
        (2, 30 * SECOND),
        (3, 1 * MINUTE),
        (4, 2 * MINUTE),
        (5, 5 * MINUTE),
        (6, 10 * MINUTE),
        (7, 20 * MINUTE),
        (8, 40 * MINUTE),
        (9, 1 * HOUR),
        (10, 2 * HOUR),
        (11, 2 * HOUR),  # stays at the last entry
        (50, 2 * HOUR),
        (10_000, 2 * HOUR),
    ],
)
@pytest.mark.parametrize("seed", ["run-1:step-a", "run-2:step-a", "", "ünïcode"])
def test_delay_is_base_plus_bounded_jitter(failures: int, base: int, seed: str) -> None:
    delay = retry_delay_ms(failures, seed=seed)
    assert base <= delay < base + MAX_JITTER_MS
    assert type(delay) is int


@pytest.mark.parametrize(
    ("failures", "seed", "expected"),
    [
        # Pinned values: the jitter is sha1(f"{seed}:{failures}"), first 8 bytes big-endian,
        # modulo MAX_JITTER_MS. Changing the derivation would change every stored schedule.
        (1, "run-1:step-a", 15_000 + 4_592),
        (2, "run-1:step-a", 30_000 + 7_767),
        (10, "run-1:step-a", 7_200_000 + 26_235),
        (1, "run-2:step-a", 15_000 + 4_466),
    ],
)
def test_delay_is_pinned(failures: int, seed: str, expected: int) -> None:
    assert retry_delay_ms(failures, seed=seed) == expected


def test_delay_is_deterministic() -> None:
    for failures in range(1, 15):
        first = retry_delay_ms(failures, seed="run-1:step-a")
        assert all(retry_delay_ms(failures, seed="run-1:step-a") == first for _ in range(3))


def test_jitter_depends_on_seed_and_attempt() -> None:
    by_seed = {retry_delay_ms(1, seed=f"run-{i}") for i in range(200)}
    # 200 draws from 30 000 values: far more than a handful of distinct delays
    assert len(by_seed) > 150
    assert min(by_seed) >= 15 * SECOND
    assert max(by_seed) < 15 * SECOND + MAX_JITTER_MS

    by_attempt = {retry_delay_ms(n, seed="same") - 2 * HOUR for n in range(10, 210)}
    assert len(by_attempt) > 150
    assert min(by_attempt) >= 0
    assert max(by_attempt) < MAX_JITTER_MS


def test_jitter_spreads_over_the_whole_window() -> None:
    jitters = [retry_delay_ms(1, seed=f"s{i}") - 15 * SECOND for i in range(2_000)]
    assert min(jitters) < MAX_JITTER_MS * 0.05
    assert max(jitters) > MAX_JITTER_MS * 0.95
    mean = sum(jitters) / len(jitters)
    assert MAX_JITTER_MS * 0.4 < mean < MAX_JITTER_MS * 0.6


@pytest.mark.parametrize(
    ("failures", "fragment"),
    [
        (0, "must be >= 1"),
        (-1, "must be >= 1"),
        (True, "expected an int >= 1"),
        (1.0, "expected an int >= 1"),
        ("1", "expected an int >= 1"),
        (None, "expected an int >= 1"),
    ],
)
def test_invalid_failures(failures: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        retry_delay_ms(failures, seed="x")
    assert f"invalid failures {failures!r}" in str(info.value)


@pytest.mark.parametrize("seed", [None, 1, b"run"])
def test_invalid_seed(seed: Any) -> None:
    with pytest.raises(ValueError, match=r"invalid seed .*expected a str"):
        retry_delay_ms(1, seed=seed)
