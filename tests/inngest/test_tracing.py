"""OpenTelemetry across processes: `stepwell serve --otlp-endpoint` exports the spans of a run of
the official Python SDK app to a real OTLP/HTTP receiver, and the app receives the W3C
`traceparent` of the run's trace on every call; the trace starts at the event's sender."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path

import pytest
from otlp_receiver import ReceivedSpan, otlp_receiver
from sdk_harness import python_app_spec, start_harness, wait_for


def test_an_sdk_run_is_one_trace_from_the_sender_to_the_app(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")      # export within 50 ms, not 5 s
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stepwell-under-test")
    trace_id, sender_span = secrets.token_hex(16), secrets.token_hex(8)
    with otlp_receiver() as receiver, contextmanager(start_harness)(
            python_app_spec(), f"sqlite:///{tmp_path / 'stepwell.db'}", tmp_path,
            serve_args=("--otlp-endpoint", receiver.url)) as sdk:
        response = sdk.client.post(
            f"{sdk.url}/e/{sdk.event_key}",
            json={"name": "app/email.requested", "data": {"to": "a@b.c", "template": "hi"}},
            headers={"traceparent": f"00-{trace_id}-{sender_span}-01"})
        assert response.status_code == 200, response.text
        run = sdk.finish(response.json()["ids"][0], "send-email")
        assert run["status"] == "Completed"

        def run_span() -> list[ReceivedSpan]:
            spans = receiver.received()
            return spans if any(s.name.startswith("run ") for s in spans) else []

        spans = wait_for(run_span, "the run's span at the OTLP receiver", context=sdk.logs)
        headers = sdk.client.get(f"{sdk.app.url}/_test/traceparents").json()
    [root] = [s for s in spans if s.name.startswith("run ")]
    assert root.service == "stepwell-under-test"
    assert root.attributes["stepwell.run.id"] == run["run_id"]
    assert root.attributes["stepwell.run.status"] == "completed"
    assert {s.trace_id for s in spans} == {trace_id}         # one trace, the sender's
    assert root.parent_span_id == sender_span
    calls = [s for s in spans if s.name.startswith("call ")]
    assert len(calls) >= 2 and all(s.parent_span_id == root.span_id for s in calls)
    # Each call the app received carried the run's trace and the span of that call.
    assert len(headers) == len(calls)
    assert {h.split("-")[1] for h in headers} == {trace_id}
    assert {h.split("-")[2] for h in headers} == {s.span_id for s in calls}
