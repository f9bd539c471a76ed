"""Run and event ids: ULIDs, increasing in the order they are made (lists sort by them)."""

from __future__ import annotations

import time

from ulid import ULID

from stepwell.runtime.scripts import new_id


def test_new_ids_are_valid_ulids_of_now_and_strictly_increasing() -> None:
    before = time.time()
    ids = [new_id() for _ in range(5000)]        # many share a millisecond
    after = time.time()
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for value in (ids[0], ids[-1]):
        parsed = ULID.from_str(value)
        assert str(parsed) == value                  # canonical Crockford spelling
        assert before - 0.002 <= parsed.timestamp <= after + 0.002
