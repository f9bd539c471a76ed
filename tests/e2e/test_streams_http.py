"""Durable streams over HTTP (issue 18.1): a real `stepwell start` process, subscribed with the
Python client over Server-Sent Events; the server (which is also the worker) is SIGKILLed in the
middle of the stream and started again, and the subscriber ends with every item exactly once,
in order. Tokens are scoped: one channel's token cannot read another."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import stepwell
from stepwell.client import AsyncClient, drop_retracted

DEADLINE_S = 90.0
CHUNKS = 12

APP = '''
import stepwell

app = stepwell.App("streamer")

@app.function(id="writer", trigger="t/write")
async def writer(ctx, step):
    for i in range(CHUNKS):
        async def chunk(i=i):
            await step.publish("tokens", i)          # live, inside the step body
            return i
        await step.run(f"chunk-{i}", chunk)
        await step.publish("progress", i)            # in the handler: once, even replayed
        await step.sleep(f"pause-{i}", "150ms")
    return "done"
'''.replace("CHUNKS", str(CHUNKS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tmp_path: Path, db_url: str, port: int) -> subprocess.Popen[bytes]:
    """`stepwell start` on `port`, once it answers (its output goes to a log file)."""
    log = tmp_path / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepwell", "start", "stream_app.py:app", "--db", db_url,
             "--port", str(port)], cwd=tmp_path, env=dict(os.environ), stdout=out,
            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + DEADLINE_S
    while b"running at " not in log.read_bytes():
        assert proc.poll() is None, f"stepwell start exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"stepwell start did not start: {log.read_text()}"
        time.sleep(0.05)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def first_run(client: AsyncClient, event_id: str) -> str:
    deadline = time.monotonic() + DEADLINE_S
    while not (runs := await client.runs(event_id=event_id)):
        assert time.monotonic() < deadline, "no run started"
        await asyncio.sleep(0.05)
    return runs[0].id


async def test_a_subscriber_gets_every_item_once_across_a_sigkill_of_the_server(
        tmp_path: Path, db_url: str) -> None:
    (tmp_path / "stream_app.py").write_text(APP)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, db_url, port)
    try:
        async with AsyncClient(url) as client:
            run_id = await first_run(client, await client.send("t/write", {}))
            channel = f"run:{run_id}"
            token = await client.stream_token(channel)
            items: list[dict[str, Any]] = []
            killed = False

            async def consume() -> None:
                nonlocal proc, killed
                async for item in client.subscribe(channel, token=token,
                                                   reconnect_delay=0.1):
                    items.append(item)
                    if not killed and len(items) >= 6:
                        kill(proc)                           # mid-stream, mid-run
                        killed = True
                        proc = start(tmp_path, db_url, port)
                    if item["topic"] == "progress" and item["data"] == CHUNKS - 1:
                        return
            await asyncio.wait_for(consume(), DEADLINE_S)
            assert killed
            offsets = [i["offset"] for i in items]
            assert offsets == sorted(set(offsets)), offsets          # no item twice
            assert offsets == list(range(1, len(items) + 1)), offsets  # none lost
            expected = [(topic, i) for i in range(CHUNKS) for topic in ("tokens", "progress")]
            assert [(i['topic'], i['data']) for i in drop_retracted(items)] == expected
    finally:
        kill(proc)


async def test_tokens_are_scoped_to_their_channel_and_topics(tmp_path: Path) -> None:
    app = stepwell.App("scoped")

    @app.function(id="f", trigger="t/f")
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        for topic in ("tokens", "other", "tokens"):
            await step.publish(topic, topic, channel="user:7")

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async with stepwell.Engine(app, db=db) as engine:
        await engine.send("t/f", {})
        await asyncio.wait_for(engine.idle(), DEADLINE_S)
        token_a = await engine.stream_token("run:A", ttl="1m")
        only_tokens = await engine.stream_token("user:7", topics=["tokens"])
    (tmp_path / "stream_app.py").write_text("import stepwell\napp = stepwell.App('scoped')\n")
    port = free_port()
    proc = start(tmp_path, db, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            wrong = await http.get("/v1/streams/run:B", params={"token": token_a})
            assert wrong.status_code == 403
            assert "is for channel 'run:A', not 'run:B'" in wrong.json()["error"]
            forged = await http.get("/v1/streams/run:A", params={"token": token_a[:-2] + "xx"})
            assert forged.status_code == 401 and "signature" in forged.json()["error"]
            bad_from = await http.get("/v1/streams/run:A",
                                      params={"token": token_a, "from": "-3"})
            assert bad_from.status_code == 400 and "'from'" in bad_from.json()["error"]
            minted = await http.post("/v1/stream-tokens", json={"channel": "x y"})
            assert minted.status_code == 400 and "may only have" in minted.json()["error"]
            minted = await http.post("/v1/stream-tokens", json={"channel": "run:A",
                                                                "ttl": "30d"})
            assert minted.status_code == 400 and "7d" in minted.json()["error"]
        async with AsyncClient(f"http://127.0.0.1:{port}") as client:
            seen: list[dict[str, Any]] = []

            async def two() -> None:
                async for item in client.subscribe("user:7", token=only_tokens):
                    seen.append(item)
                    if len(seen) == 2:
                        return
            await asyncio.wait_for(two(), DEADLINE_S)
            assert [(i["offset"], i["topic"]) for i in seen] == [(1, "tokens"), (3, "tokens")]
            minted_token = await client.stream_token("user:7", topics=["other"])
            others = client.subscribe("user:7", token=minted_token)
            assert (await others.__anext__())["topic"] == "other"
            await others.aclose()
    finally:
        kill(proc)
