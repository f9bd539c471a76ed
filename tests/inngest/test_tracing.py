"""OpenTelemetry across processes: `stepwell serve --otlp-endpoint` exports the spans of a run of
the official Python SDK app to a real OTLP/HTTP receiver, and the app receives the W3C
`traceparent` of the run's trace on every call; the trace starts at the event's sender."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path

import pytest
from otlp_receiver import ReceivedSpan, otlp_receiver
from sdk_harness import (
    TS_APP_DIR,
    AppSpec,
    python_app_spec,
    start_harness,
    typescript_app_spec,
    wait_for,
)


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


def test_sdk_step_attempts_and_waits_are_spans_of_one_trace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step attempts of an official-SDK run are spans under the call they ran in, with the
    attributes of native attempts; its sleep and wait are traced while they happen."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    with otlp_receiver() as receiver, contextmanager(start_harness)(
            python_app_spec(), f"sqlite:///{tmp_path / 'stepwell.db'}", tmp_path,
            serve_args=("--otlp-endpoint", receiver.url)) as sdk:
        flaky = sdk.finish(sdk.send_one("app/flaky.sync", {"key": "k"}), "flaky-sync")
        assert flaky["status"] == "Completed"
        order_id = secrets.token_hex(4)
        order = sdk.run_of(sdk.send_one("shop/order.created",
                                        {"orderId": order_id, "userId": 7}), "process-order")

        def named(name: str) -> list[ReceivedSpan]:
            return [s for s in receiver.received() if s.name == name
                    and s.attributes["stepwell.run.id"] == order["run_id"]]

        # Visible while the run waits: the sleep's real span once it woke, the wait scheduled.
        wait_for(lambda: named("wait wait-payment (scheduled)"), "the scheduled wait's span",
                 context=sdk.logs)
        assert len(named("sleep wait-for-payment")) == 1
        assert not named("wait wait-payment")
        assert not [s for s in receiver.received() if s.name.startswith("run ")
                    and s.attributes["stepwell.run.id"] == order["run_id"]]
        sdk.send_one("shop/payment.success", {"orderId": order_id})
        run = sdk.wait_run(order["run_id"])
        assert run["status"] == "Completed" and run["output"]["paid"] is True

        def both_ended() -> list[ReceivedSpan]:
            spans = receiver.received()
            return spans if len([s for s in spans if s.name.startswith("run ")]) == 2 else []

        spans = wait_for(both_ended, "both runs' spans", context=sdk.logs)
    by_id = {s.span_id: s for s in spans}
    for run_id in (flaky["run_id"], run["run_id"]):
        mine = [s for s in spans if s.attributes["stepwell.run.id"] == run_id]
        [root] = [s for s in mine if s.name.startswith("run ")]
        assert len({s.trace_id for s in mine}) == 1            # one connected trace
        for span in mine:
            if span is not root:
                assert span.parent_span_id in by_id, span.name
                assert by_id[span.parent_span_id].trace_id == root.trace_id
                parent = by_id[span.parent_span_id]
                assert parent is root or parent.parent_span_id == root.span_id, span.name

    def steps(run_id: str, name: str) -> list[ReceivedSpan]:
        found = [s for s in spans if s.name == f"step {name}"
                 and s.attributes["stepwell.run.id"] == run_id]
        return sorted(found, key=lambda s: int(str(s.attributes["stepwell.step.attempt"])))

    attempts = steps(flaky["run_id"], "flaky-call")
    assert [(s.attributes["stepwell.step.attempt"], s.attributes["stepwell.step.status"],
             s.status_code) for s in attempts] == [
        (0, "retrying", 2), (1, "retrying", 2), (2, "completed", 0)]
    for span in attempts:
        call = by_id[span.parent_span_id]                   # the call the attempt ran in
        assert call.name.startswith("call ")
        assert call.attributes["stepwell.step.attempt"] == span.attributes["stepwell.step.attempt"]
        assert span.attributes["stepwell.function.id"] == call.attributes["stepwell.function.id"]
        assert span.attributes["stepwell.step.name"] == "flaky-call"
    assert "flaky failure on attempt 0" in attempts[0].exception_message
    [user] = steps(run["run_id"], "get-user")
    assert by_id[user.parent_span_id].name.startswith("call ")
    names = sorted(s.name for s in spans if s.attributes["stepwell.run.id"] == run["run_id"])
    for name in ("sleep wait-for-payment (scheduled)", "sleep wait-for-payment",
                 "wait wait-payment (scheduled)", "wait wait-payment"):
        assert names.count(name) == 1, (name, names)


def test_steps_a_typescript_app_checkpointed_are_spans_of_the_call_they_ran_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpointing SDK (TypeScript v4) runs three steps in one call, posting each result
    to /v1/checkpoint: three step spans under that call's span."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    node = typescript_app_spec("v4")              # checks Node and the npm packages
    app = AppSpec("ts-ckpt", [node.cmd[0], str(TS_APP_DIR / "app_checkpoint.mjs"), "0"],
                  node.cwd)
    with otlp_receiver() as receiver, contextmanager(start_harness)(
            app, f"sqlite:///{tmp_path / 'stepwell.db'}", tmp_path,
            serve_args=("--otlp-endpoint", receiver.url)) as sdk:
        run = sdk.finish(sdk.send_one("ckpt/three", {"key": "k"}), "three-steps")
        assert run["status"] == "Completed"

        def ended() -> list[ReceivedSpan]:
            spans = [s for s in receiver.received() if s.attributes["stepwell.run.id"]
                     == run["run_id"]]
            return spans if any(s.name.startswith("run ") for s in spans) else []

        spans = wait_for(ended, "the run's span", context=sdk.logs)
    [root] = [s for s in spans if s.name.startswith("run ")]
    [call] = [s for s in spans if s.name.startswith("call ")]
    assert call.parent_span_id == root.span_id
    steps = [s for s in spans if s.name.startswith("step ")]
    assert sorted(s.attributes["stepwell.step.name"] for s in steps) == ["a", "b", "c"]
    assert all(s.parent_span_id == call.span_id and s.trace_id == root.trace_id
               and s.attributes["stepwell.step.status"] == "completed" for s in steps)
