"""The Inngest protocol's pure parts: registration bodies, memos, opcodes, signing."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from stepwell.core.canonical import canonical_json
from stepwell.core.config import CronTrigger, EventTrigger, id_for_key
from stepwell.core.models import InvalidEventError, Memo, validate_event_payload
from stepwell.core.protocol import (
    ProtocolError,
    bearer_ok,
    hashed_key,
    invoke_request,
    match_path_of,
    memo_value,
    parse_ops,
    parse_registration,
    sign,
    sleep_until,
    steps_map,
    wait_request,
)
from stepwell.runtime.gateway import canonical_header

TS_BODY: dict[str, Any] = {
    "appName": "ts-app", "deployType": "ping", "url": "http://127.0.0.1:3000/api/inngest",
    "sdk": "js:v4.24.0", "v": "0.1", "framework": "nodejs",
    "functions": [{
        "id": "ts-app-sync-crm", "name": "sync-crm",
        "triggers": [{"event": "crm/sync"}, {"cron": "TZ=Europe/Paris 0 12 * * 5"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {
            "type": "http",
            "url": "http://127.0.0.1:3000/api/inngest?fnId=ts-app-sync-crm&stepId=step"},
            "retries": {"attempts": 10}}},
        "rateLimit": {"limit": 10, "period": "1m", "key": "event.data.userId"},
        "throttle": {"limit": 5, "period": "1s"},
        "debounce": {"period": "10s", "key": "event.data.productId"},
        "priority": {"run": "event.data.plan === 'enterprise' ? 100 : 0"},
        "concurrency": [{"limit": 2, "key": "event.data.user", "scope": "env"}],
        "cancel": [{"event": "crm/cancel", "if": "event.data.id == async.data.id",
                    "timeout": "1h"}],
        "timeouts": {"start": "10s", "finish": "1m"},
    }],
}


def test_ts_registration_maps_every_option() -> None:
    reg = parse_registration(TS_BODY)
    assert reg.app_id == "ts-app"
    [fn] = reg.functions
    spec = fn.spec
    assert fn.url.endswith("fnId=ts-app-sync-crm&stepId=step")
    assert spec.public_id == "ts-app-sync-crm" and spec.remote
    assert isinstance(spec.triggers[0], EventTrigger) and spec.triggers[0].name == "crm/sync"
    assert isinstance(spec.triggers[1], CronTrigger)
    assert spec.retries == 10
    assert spec.rate_limit is not None and spec.rate_limit.period_ms == 60_000
    assert spec.throttle is not None and spec.throttle.limit == 5
    assert spec.debounce is not None and spec.debounce.period_ms == 10_000
    assert spec.priority is not None and spec.priority.evaluate({"data": {"plan": "enterprise"}}
                                                                ) == 100
    assert spec.concurrency[0].scope == "env" and spec.concurrency[0].limit == 2
    [rule] = spec.cancel_on
    assert rule.match_path == "data.id" and rule.timeout_ms == 3_600_000
    assert spec.timeout_start_ms == 10_000 and spec.timeout_finish_ms == 60_000


def test_python_sdk_casing_and_concurrency_forms() -> None:
    body = {"appname": "py-app", "deploy_type": "ping", "url": "http://h/api/inngest",
            "functions": [
                {"id": "py-app-a", "triggers": [{"event": "a"}], "concurrency": 3,
                 "steps": {"step": {"retries": {"attempts": 0}}}},
                {"id": "py-app-b", "triggers": [{"event": "b", "expression": "event.data.x > 1"}],
                 "concurrency": {"limit": 0}, "batchEvents": {"maxSize": 5, "timeout": "5s"}}]}
    reg = parse_registration(body)
    a, b = (f.spec for f in reg.functions)
    assert a.retries == 0 and a.concurrency[0].limit == 3
    assert b.concurrency == () and b.batch is not None and b.batch.max_size == 5
    assert isinstance(b.triggers[0], EventTrigger) and b.triggers[0].condition is not None


@pytest.mark.parametrize(("body", "fragment"), [
    ([], "must be a JSON object"),
    ({"url": "http://x", "functions": []}, "App ID required"),
    ({"appName": "a", "url": "ftp://x", "functions": []}, "'url' must be"),
    ({"appName": "a", "url": "http://x", "functions": {}}, "'functions' must be an array"),
    ({"appName": "a", "url": "http://x", "functions": [], "surprise": 1}, "unknown keys"),
    ({"appName": "a", "url": "http://x", "functions": [{"name": "no id"}]}, "string 'id'"),
    ({"appName": "a", "url": "http://x", "functions": [
        {"id": "f", "triggers": [{"event": "e"}], "bogus": True}]}, "unknown options ['bogus']"),
    ({"appName": "a", "url": "http://x", "functions": [
        {"id": "f", "triggers": [{"event": "e"}], "throttle": {"limit": 1, "period": "1ms"}}]},
     "'throttle.period'"),
    ({"appName": "a", "url": "http://x", "functions": [
        {"id": "f", "triggers": [{"event": "e", "expression": "event.data.x =="}]}]},
     "invalid expression"),
    ({"appName": "a", "url": "http://x", "functions": [
        {"id": "f", "triggers": [{"event": "e"}]}, {"id": "f", "triggers": [{"event": "e"}]}]},
     "registered twice"),
    ({"appName": "a", "url": "http://x", "functions": [{"id": "f", "triggers": [{"x": 1}]}]},
     "neither 'event' nor 'cron'"),
])
def test_bad_registrations_are_rejected_with_the_reason(body: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_registration(body)
    assert fragment in str(info.value)


def test_match_path_extraction() -> None:
    assert match_path_of("event.data.orderId == async.data.orderId") == "data.orderId"
    assert match_path_of("async.data.id == event.data.id") == "data.id"
    assert match_path_of("event.data.a == async.data.b") is None
    assert match_path_of("event.data.a == event.data.a") is None
    assert match_path_of("event.data.a == async.data.a && async.x") is None


def test_memo_values_follow_the_sdk_shapes() -> None:
    assert memo_value(Memo("h", "s", "run", 0, data=5)) == {"data": 5}
    assert memo_value(Memo("h", "s", "run", 0, error={"name": "E"})) == {"error": {"name": "E"}}
    assert memo_value(Memo("h", "s", "sleep", 0, due_at=1)) is None
    assert memo_value(Memo("h", "s", "wait", 0, data={"name": "e"})) == {"name": "e"}
    assert memo_value(Memo("h", "s", "wait", 0, data=None)) is None
    assert memo_value(Memo("h", "s", "invoke", 0, data=[1])) == {"data": [1]}


def test_steps_map_leaves_out_unresolved_steps_and_orders_the_stack() -> None:
    memos = [Memo("b", "b", "run", 1, data=2), Memo("a", "a", "run", 0, data=1),
             Memo("s", "s", "sleep", 2, due_at=500), Memo("w", "w", "wait", 3, pending=True)]
    steps, stack = steps_map(memos, now=100)
    assert steps == {"a": {"data": 1}, "b": {"data": 2}} and stack == ["a", "b"]
    steps, stack = steps_map(memos, now=600)
    assert stack == ["a", "b", "s"] and steps["s"] is None


def test_opcodes() -> None:
    ops = parse_ops([{"id": "h1", "op": "Sleep", "name": "3s", "opts": None},
                     {"id": "h2", "op": "WaitForEvent", "name": "pay",
                      "opts": {"timeout": "1m", "if": "event.data.id == async.data.id"}},
                     {"id": "h3", "op": "InvokeFunction", "opts": {
                         "function_id": "app-fn", "payload": {"data": {"x": 1}}, "timeout": "1h"}}])
    assert sleep_until(ops[0], 1000) == 4000
    iso = parse_ops({"id": "h", "op": "Sleep", "name": "2026-01-01T00:00:01.000Z"})[0]
    assert sleep_until(iso, 0) == 1_767_225_601_000
    assert wait_request(ops[1]) == ("pay", 60_000, "data.id", None)
    assert invoke_request(ops[2]) == ("app-fn", {"x": 1}, 3_600_000)
    for bad in ({"op": "StepRun"}, {"id": "x"}, "nope", [{"id": "", "op": "StepRun"}]):
        with pytest.raises(ProtocolError):
            parse_ops(bad)
    with pytest.raises(ProtocolError, match="names no event"):
        wait_request(parse_ops({"id": "h", "op": "WaitForEvent"})[0])


def test_signing_matches_the_sdk_algorithm() -> None:
    key = "signkey-test-12345678"
    body = canonical_json({"b": 1, "a": [1.5, "x"]})
    assert body == b'{"a":[1.5,"x"],"b":1}'
    header = sign(body, key, 1700000000)
    expected = hmac.new(b"12345678", body + b"1700000000", hashlib.sha256).hexdigest()
    assert header == f"t=1700000000&s={expected}"
    token = hashlib.sha256(bytes.fromhex("12345678")).hexdigest()
    assert hashed_key(key) == token
    assert bearer_ok(f"Bearer {token}", [key])
    assert bearer_ok(f"Bearer signkey-test-{token}", [key])
    assert not bearer_ok("Bearer undefined", [key])
    assert not bearer_ok(None, [key])


@pytest.mark.parametrize("fn_id", ["py-app-billing/charge", "parallel_steps/child",
                                   "py-app-crazy%$^&*(_+{|:<?☃️", "a&stepId=evil?x=1"])
def test_any_sdk_function_id_is_accepted_and_encoded_in_its_url(fn_id: str) -> None:
    body = {"appname": "py-app", "url": "http://127.0.0.1:3000/api/inngest?x=1",
            "functions": [{"id": fn_id, "triggers": [{"event": "a/b"}]}]}
    [fn] = parse_registration(body).functions
    assert fn.spec.id == fn_id and fn.spec.qualified_id == f"py-app/{fn_id}"
    query = parse_qs(urlsplit(fn.url).query)
    assert query == {"x": ["1"], "fnId": [fn_id], "stepId": ["step"]}


def test_function_ids_in_storage_keys_are_encoded_one_to_one() -> None:
    assert id_for_key("shop/process-order") == "shop/process-order"   # old keys unchanged
    assert id_for_key("app/a:b.c_d-e") == "app/a:b.c_d-e"
    encoded = {id_for_key(i) for i in ("app/x y", "app/x%20y", "app/☃", "app/%E2%98%83")}
    assert len(encoded) == 4
    assert all(" " not in k and "☃" not in k for k in encoded)


def test_an_empty_sdk_function_id_is_refused_naming_the_app() -> None:
    body = {"appname": "py-app", "url": "http://127.0.0.1:3000/api/inngest",
            "functions": [{"id": "", "triggers": [{"event": "a/b"}]}]}
    with pytest.raises(ProtocolError, match=r"app 'py-app'.*non-empty"):
        parse_registration(body)


def test_events_with_integers_beyond_2_pow_53_are_refused_naming_the_field() -> None:
    validate_event_payload({"name": "a/b", "data": {"n": 2**53 - 1, "m": -(2**53 - 1)}})
    with pytest.raises(InvalidEventError, match=r"'data\.items\[1\]\.n'.*2\^53.*string"):
        validate_event_payload({"name": "a/b", "data": {"items": [{"n": 1}, {"n": 2**53}]}})
    with pytest.raises(InvalidEventError, match=r"'user\.id'"):
        validate_event_payload({"name": "a/b", "data": {}, "user": {"id": -(2**63)}})


def test_ai_gateway_header_names_are_canonical_as_go_sends_them() -> None:
    assert canonical_header("x-api-key") == "X-Api-Key"
    assert canonical_header("content-type") == "Content-Type"
    assert canonical_header("AUTHORIZATION") == "Authorization"
    assert canonical_header("anthropic-version") == "Anthropic-Version"


def test_an_sdk_apps_app_version_is_what_its_runs_record() -> None:
    assert {s.spec.version for s in parse_registration(TS_BODY).functions} == {None}
    versioned = parse_registration({**TS_BODY, "appVersion": "v2.3.0"})
    assert {s.spec.version for s in versioned.functions} == {"v2.3.0"}
