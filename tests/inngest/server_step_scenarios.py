"""Steps the server performs or resolves for an SDK app: `step.fetch` (Gateway),
`step.ai.infer` (AIGateway), `step.waitForSignal` + `step.sendSignal` / `POST /v1/signals`
(WaitForSignal). The functions are in `ts_app/server_steps.mjs`; `upstream` is the small HTTP
server of upstream.py, which `stepwell serve` calls on the steps' behalf.

Each scenario starts all its runs at once and then checks them, so the waits overlap (retries
back off 1 s with `--retry-interval 1`; the shortest signal timeout is 1 s).
"""

from __future__ import annotations

import json
from typing import Any

from sdk_harness import SdkHarness, free_port, step_names, unique
from sdk_scenarios import step, text_of, wait_step
from upstream import API_KEY, Upstream

FETCH_STEP = "step.fetch: 127.0.0.1"   # the id the SDK gives a fetch to that host


def fetch_and_ai_infer(sdk: SdkHarness, upstream: Upstream) -> None:
    key = unique("quote")
    dead_url = f"http://127.0.0.1:{free_port()}/nothing-listens-here"
    quote_event, dead_event = sdk.send(
        {"name": "tools/fetch.quote", "data": {"baseUrl": upstream.url, "key": key}},
        {"name": "tools/fetch.unreachable", "data": {"url": dead_url}},
    )
    ai_events = _send_ai(sdk, upstream, key)

    # step.fetch: the server made the requests; HTTP statuses, headers and bodies reach the
    # app's Response objects, and a 404 is a successful step (fetch semantics).
    run = sdk.finish(quote_event, "fetch-quote")
    assert run["status"] == "Completed", run
    assert run["output"] == {
        "quote": {"key": key, "price": 21, "header": key},
        "status": 200, "source": "upstream",
        "echoed": {"method": "POST", "body": {"key": key}, "contentType": "application/json"},
        "missing": {"status": 404, "ok": False, "body": "nothing at /missing"},
        "doubled": 42,
    }
    assert step_names(run) == [FETCH_STEP] * 3 + ["after-fetch"], step_names(run)
    fetches = [s for s in run["steps"] if s["id"] == FETCH_STEP]
    assert [s["output"]["status_code"] for s in fetches] == [200, 200, 404]
    assert all(s["status"] == "completed" and s["attempts"] == 1 for s in fetches), fetches
    # Each request was made once (memoized), with the app's method, headers and body.
    [quote_req] = [r for r in upstream.seen("/quote") if r["headers"].get("x-request-key") == key]
    assert quote_req["method"] == "GET"
    assert len([r for r in upstream.seen("/echo") if r["body"] == {"key": key}]) == 1
    assert len(sdk.ledger("after-fetch", key)) == 1

    # Unreachable: retried (retries: 1), then the step and the run fail naming URL and cause.
    dead = sdk.finish(dead_event, "fetch-unreachable")
    assert dead["status"] == "Failed", dead
    assert dead_url in text_of(dead["output"]) and "ConnectError" in text_of(dead["output"])
    dead_step = step(dead, FETCH_STEP)
    assert dead_step["status"] == "failed" and dead_step["attempts"] == 2, dead_step
    assert dead_url in dead_step["error"]["message"], dead_step

    _check_ai(sdk, upstream, key, *ai_events)


def ai_infer(sdk: SdkHarness, upstream: Upstream) -> None:
    """step.ai.infer alone (the Python SDK has it, but no step.fetch or signals)."""
    key = unique("text")
    _check_ai(sdk, upstream, key, *_send_ai(sdk, upstream, key))


def _send_ai(sdk: SdkHarness, upstream: Upstream, key: str) -> list[str]:
    return sdk.send(
        {"name": "tools/ai.summarize", "data": {"baseUrl": f"{upstream.url}/ai",
                                                "apiKey": API_KEY, "text": key}},
        {"name": "tools/ai.summarize", "data": {"baseUrl": f"{upstream.url}/ai-broken",
                                                "apiKey": API_KEY, "text": key}},
    )


def _check_ai(sdk: SdkHarness, upstream: Upstream, key: str, ai_event: str,
              broken_event: str) -> None:
    # step.ai.infer: POSTed as JSON with the Bearer key; the provider's JSON is the result.
    ai = sdk.finish(ai_event, "ai-summarize")
    assert ai["status"] == "Completed", ai
    assert ai["output"] == {"summary": f"summary of: {key}", "model": "gpt-test"}
    assert step(ai, "summarize")["output"]["usage"]["total_tokens"] == 7
    # The tokens the provider reported are the run's model usage.
    assert ai["usage"] == {"input_tokens": 3, "output_tokens": 4, "requests": 1, "models": [
        {"model": "gpt-test", "input_tokens": 3, "output_tokens": 4, "requests": 1}]}, ai
    [ai_req] = [r for r in upstream.seen("/ai/chat/completions")
                if r["body"]["messages"][0]["content"] == key]
    assert ai_req["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert ai_req["body"]["model"] == "gpt-test"

    # A provider answering 500: retried, then a clear failure with the status and the body.
    broken = sdk.finish(broken_event, "ai-summarize")
    assert broken["status"] == "Failed", broken
    broken_step = step(broken, "summarize")
    assert broken_step["attempts"] == 2, broken_step
    message = broken_step["error"]["message"]
    assert "HTTP 500" in message and "model overloaded" in message, message
    assert "HTTP 500" in text_of(broken["output"]), broken
    assert len([r for r in upstream.seen("/ai-broken/chat/completions")
                if r["body"]["messages"][0]["content"] == key]) == 2


def _post_signal(sdk: SdkHarness, signal: str, data: Any) -> Any:
    return sdk.client.post(f"{sdk.url}/v1/signals", json={"signal": signal, "data": data})


def wait_for_signal(sdk: SdkHarness) -> None:
    by_step, by_rest, lonely, held = (unique("sig") for _ in range(4))

    def request(signal: str, timeout: str, on_conflict: str = "replace") -> dict[str, Any]:
        return {"name": "flow/approval.requested",
                "data": {"signal": signal, "timeout": timeout, "onConflict": on_conflict}}

    first_ids = sdk.send(request(by_step, "20s"), request(by_rest, "20s"),
                         request(lonely, "1s"), request(held, "3s"))
    step_run, rest_run, lonely_run, old_run = (sdk.run_of(e, "await-approval")
                                               for e in first_ids)
    for run in (step_run, rest_run, old_run):
        wait_step(sdk, run["run_id"], "wait-approval", "waiting")

    # First, while the 3s wait holds its signal. onConflict "fail": a second wait on a held
    # signal fails its own step (and here, uncaught, the run).
    failing = sdk.finish(sdk.send(request(held, "20s", "fail"))[0], "await-approval")
    assert failing["status"] == "Failed", failing
    assert "SignalConflictError" in json.dumps(step(failing, "wait-approval")["error"])
    assert old_run["run_id"] in text_of(failing["output"]), failing
    # onConflict "replace": the newcomer takes the signal; the old wait times out to null.
    newcomer = sdk.run_of(sdk.send(request(held, "20s", "replace"))[0],
                          "await-approval")
    wait_step(sdk, newcomer["run_id"], "wait-approval", "waiting")
    response = _post_signal(sdk, held, "yes")
    assert response.json()["data"] == {"run_id": newcomer["run_id"]}, response.text
    assert sdk.wait_run(newcomer["run_id"])["output"]["decided"] == "yes"

    # Sent by another function with step.sendSignal: its result names the resumed run.
    grant = sdk.finish(sdk.send_one("flow/approval.granted",
                                    {"signal": by_step, "decision": {"ok": True}}),
                       "grant-approval")
    assert grant["output"] == {"runId": step_run["run_id"]}, grant
    done = sdk.wait_run(step_run["run_id"])
    assert done["status"] == "Completed", done
    assert done["output"] == {"approval": {"signal": by_step, "data": {"ok": True}},
                              "decided": {"ok": True}}
    assert step_names(done) == ["wait-approval", "decide"]

    # Sent through the REST API, as `inngest.sendSignal()` does.
    response = _post_signal(sdk, by_rest, 42)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"run_id": rest_run["run_id"]}
    assert sdk.wait_run(rest_run["run_id"])["output"] == {
        "approval": {"signal": by_rest, "data": 42}, "decided": 42}
    # Delivered once: the wait is gone, so the same signal now reaches nobody (404, which
    # step.sendSignal reports as runId undefined).
    again = _post_signal(sdk, by_rest, 43)
    assert again.status_code == 404 and by_rest in again.json()["error"], again.text
    nobody = sdk.finish(sdk.send_one("flow/approval.granted",
                                     {"signal": unique("sig"), "decision": 1}),
                        "grant-approval")
    assert nobody["status"] == "Completed" and nobody["output"] == {"runId": None}, nobody

    # The replaced wait was not resumed by the signal: it timed out to null.
    old = sdk.wait_run(old_run["run_id"])
    assert old["output"] == {"approval": None, "decided": "timed out"}, old

    # Nobody sends: the wait times out and resolves to null.
    timed_out = sdk.wait_run(lonely_run["run_id"])
    assert timed_out["status"] == "Completed", timed_out
    assert timed_out["output"] == {"approval": None, "decided": "timed out"}
    assert [e["approved"] for e in sdk.ledger("decide", lonely)] == [False]
