"""Hostile values that once made 500s or stored poison (issue 10), shared by the in-process
tests (test_hostile_input.py), the fuzzing (test_fuzz.py) and the real-server script
(test_hostile_server.py)."""

from __future__ import annotations

# The raw JSON text of each poison value, and a word the 400 must say about it.
POISON: dict[str, str] = {
    "1e400": "finite", "-1e400": "finite", "NaN": "finite", "Infinity": "finite",
    "-Infinity": "finite", '"\\ud800"': "surrogate", '"x\\udfffy"': "surrogate",
    '"a\\u0000b"': "NUL",
}

# Every route that takes a JSON body, each with a body of the shape it expects (DATA is where
# a test puts its value, RUN a run id), so that the value put there is the only thing wrong.
JSON_ROUTES: dict[str, str] = {
    "POST /e/dev": '{"name": "shop/greet", "data": DATA}',
    "POST /v1/events": '{"name": "shop/greet", "data": DATA}',
    "POST /v1/signals": '{"signal": "go", "data": DATA}',
    "POST /fn/register": '{"url": "http://127.0.0.1:9/api", "appName": "x", "functions": [], '
                         '"data": DATA}',
    "POST /v1/cancellations": '{"app_id": "shop", "function_id": "greet", '
                              '"started_before": "2030-01-01T00:00:00Z", "data": DATA}',
    "POST /v1/runs/RUN/replay": '{"from_step": "hello", "data": DATA}',
    "POST /v1/apps/sync": '{"url": "http://127.0.0.1:9/api", "data": DATA}',
}


def with_poison(template: str, poison: str) -> bytes:
    """The route's body with `poison` at data.items[3].name."""
    data = f'{{"items": [0, 1, "two", {{"name": {poison}}}]}}'
    return template.replace("DATA", data).encode()


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Whole bodies, for any JSON route: poison, deep nesting, huge and non-finite numbers and
# times, broken URLs, NUL and surrogates in names and ids, broken and partial batches.
HOSTILE_BODIES: list[bytes] = [
    b'{"name": "fuzz/x", "data": {"x": 1e400}}', b'{"name": "fuzz/x", "data": {"x": NaN}}',
    b'{"name": "fuzz/x", "data": {"x": -Infinity}}', b'{"name": "fuzz/\\ud800", "data": {}}',
    b'{"name": "fuzz/x", "data": {"s": "\\udfff"}}', b'{"name": "fuzz/\\u0000"}',
    b'{"name": "fuzz/x", "id": "a\\u0000b"}', b'{"name": "fuzz/x", "data": {"\\u0000": 1}}',
    b'{"name": "fuzz/x", "data": ' + nested(1000) + b"}", nested(100_000),
    b'{"app_id": "fuzz", "function_id": "f", "started_before": 1e400}',
    b'{"app_id": "fuzz", "function_id": "f", "started_before": 100000000000000000000000}',
    b'{"app_id": "fuzz", "function_id": "f", "started_before": 1e23}',
    b'{"app_id": "fuzz", "function_id": "f", "started_before": "10^23"}',
    b'{"url": "http://[::1"}', b'{"url": "http://\\u0000/"}', b'{"signal": "\\u0000"}',
    b'{"from_step": "\\ud800"}', b'[{"name": "fuzz/x"}, {"name": ""}, {"name": "fuzz/y"}]',
    b'[{"name": "fuzz/x"}, {"name": ', b"1" * 5000, b"\xff\xfe", b"", b"null", b"[]", b"{}",
    b'{"name": "' + b"n" * 10_000 + b'"}', b'{"name": "fuzz/x", "id": "' + b"i" * 10_000 + b'"}',
    b'{"name": "fuzz/x", "ts": 1e400}', b'{"name": "fuzz/x", "ts": 99999999999999999999}',
    b'{"url": "http://127.0.0.1:9/", "functions": [{"id": "\\u0000"}]}',
]

# Path and query values: NUL, numbers that overflow, long and odd strings.
HOSTILE_STRINGS: list[str] = ["\x00", "a\x00b", "1e400", "NaN", "10^23", "x" * 5000,
                              "../../etc", "%00", "\u2603", "-1", "99999999999999999999999"]
