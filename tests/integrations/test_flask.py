"""examples/flask_app end to end through Flask's test client, from many threads at once: the
blocking engine is shared by the threads of a threaded WSGI server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.servers import load_example

DEADLINE_S = 30.0


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("STEPWELL_DB", f"sqlite:///{tmp_path / 'flask.db'}")
    module = load_example("flask_app/app.py", "_stepwell_flask_example")
    try:
        yield module
    finally:
        module.sw.stop()


def test_views_on_many_threads_send_events_and_their_runs_complete(example: Any) -> None:
    assert example.app.extensions["stepwell"] is example.sw

    def sign_up(n: int) -> str:
        with example.app.test_client() as client:
            reply = client.post("/signup", json={"email": f"u{n}@example.com"})
            assert reply.status_code == 200, reply.text
            return str(reply.get_json()["event_id"])

    with ThreadPoolExecutor(8) as pool:
        event_ids = list(pool.map(sign_up, range(24)))
    assert len(set(event_ids)) == 24
    client = example.app.test_client()
    deadline = time.monotonic() + DEADLINE_S
    outputs = {}
    for n, event_id in enumerate(event_ids):
        while True:
            runs = client.get(f"/signup/{event_id}").get_json()["runs"]
            if runs and runs[0]["status"] == "completed":
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.02)
        outputs[n] = runs[0]["output"]
    # `mail.email` in the handler: the step's dataclass came back as the dataclass.
    assert outputs == {n: {"welcomed": f"u{n}@example.com", "sent": True} for n in range(24)}
