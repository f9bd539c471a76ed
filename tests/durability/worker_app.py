"""The worker process of the SIGKILL durability test (`test_sigkill.py`); not a test module.

    python worker_app.py DB_PATH JOURNAL_PATH ACK_PATH SEND_COUNT

Starts an engine on DB_PATH, sends the events `evt-0` .. `evt-{SEND_COUNT-1}` that no earlier
incarnation acknowledged, waits until every run has completed, and exits 0. It is meant to be
SIGKILLed at any moment and started again, as often as the test likes.

Files it leaves for the test (both append-only, one JSON object per line, each line written with
a single `os.write` on an `O_APPEND` descriptor, so a SIGKILL never tears a line; no fsync: a
SIGKILL loses no data the kernel has already accepted):

- JOURNAL: `{"e": "ready", "pid": ...}` once the engine has started, and for every execution of
  a step body `{"e": "start" | "end", "run": ..., "step": ..., "pid": ..., "x": exec_id}`,
  `start` before the body does anything and `end` just before it returns. Each body returns
  `{"v": value, "x": exec_id}`, so the memo committed for a step names the execution it came from.
- ACK: `{"id": event_id, "pid": ...}` after `engine.send` returned for that event (it is
  acknowledged, so it must be durable).

Event ids are deterministic (`evt-N`): an event sent but not yet acknowledged when the process
died is sent again by the next incarnation, and the engine's de-duplication by id must make that
second send start no second run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import stepwell

EVENT = "durability/go"
FUNCTION_ID = "durability/chain"
# The step ids of one run in order, with their kinds (memos.kind).
STEPS: list[tuple[str, str]] = [("load", "run"), ("enrich", "run"), ("nap", "sleep"),
                                ("combine", "run"), ("finish", "run")]
SENDERS = 4                   # concurrent senders, so several sends are in flight at a kill
SEND_PAUSE_S = (0.05, 0.35)    # pause between two sends of one sender: spreads the load in time
STEP_WORK_S = (0.002, 0.03)   # how long a step body "works": widens the window for a kill


def event_id(n: int) -> str:
    return f"evt-{n}"


# The pure values of the steps: what each step body returns (as "v") for event data n.
def load_value(n: int) -> int:
    return n * 3 + 1


def enrich_value(n: int, a: int) -> int:
    return a + n % 7


def combine_value(a: int, b: int) -> int:
    return a * 2 + b


def finish_value(n: int, c: int) -> str:
    return f"n{n}:{c}"


def expected_step_values(n: int) -> dict[str, Any]:
    a = load_value(n)
    b = enrich_value(n, a)
    c = combine_value(a, b)
    return {"load": a, "enrich": b, "combine": c, "finish": finish_value(n, c)}


def expected_output(n: int) -> dict[str, Any]:
    values = expected_step_values(n)
    return {"n": n, "a": values["load"], "b": values["enrich"], "c": values["combine"],
            "result": values["finish"]}


class Journal:
    """Append-only JSON lines, one `os.write` per line (safe from threads and from SIGKILL)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **record: Any) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        written = os.write(self.fd, line)
        assert written == len(line), "short write to the journal"


def build_app(journal: Journal) -> stepwell.App:
    app = stepwell.App("durability")
    pid = os.getpid()

    def begin(run_id: str, step_id: str) -> str:
        exec_id = uuid.uuid4().hex
        journal.write(e="start", run=run_id, step=step_id, pid=pid, x=exec_id)
        return exec_id

    def done(run_id: str, step_id: str, exec_id: str, value: Any) -> dict[str, Any]:
        journal.write(e="end", run=run_id, step=step_id, pid=pid, x=exec_id)
        return {"v": value, "x": exec_id}

    def load(run_id: str, n: int) -> dict[str, Any]:                      # sync, on a thread
        exec_id = begin(run_id, "load")
        time.sleep(random.uniform(*STEP_WORK_S))
        return done(run_id, "load", exec_id, load_value(n))

    async def enrich(run_id: str, n: int, a: int) -> dict[str, Any]:      # async, on the loop
        exec_id = begin(run_id, "enrich")
        await asyncio.sleep(random.uniform(*STEP_WORK_S))
        return done(run_id, "enrich", exec_id, enrich_value(n, a))

    def combine(run_id: str, a: int, b: int) -> dict[str, Any]:           # sync, on a thread
        exec_id = begin(run_id, "combine")
        time.sleep(random.uniform(*STEP_WORK_S))
        return done(run_id, "combine", exec_id, combine_value(a, b))

    async def finish(run_id: str, n: int, c: int) -> dict[str, Any]:      # async, on the loop
        exec_id = begin(run_id, "finish")
        await asyncio.sleep(random.uniform(*STEP_WORK_S))
        return done(run_id, "finish", exec_id, finish_value(n, c))

    @app.function(id="chain", trigger=EVENT, retries=0)
    async def chain(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        n = ctx.event.data["n"]
        a = (await step.run("load", load, ctx.run_id, n))["v"]
        b = (await step.run("enrich", enrich, ctx.run_id, n, a))["v"]
        await step.sleep("nap", "50ms")               # a real-clock timer in flight at kills
        c = (await step.run("combine", combine, ctx.run_id, a, b))["v"]
        result = (await step.run("finish", finish, ctx.run_id, n, c))["v"]
        return {"n": n, "a": a, "b": b, "c": c, "result": result}

    return app


def acknowledged(ack_path: str) -> set[str]:
    path = Path(ack_path)
    if not path.exists():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line}


async def main(db_path: str, journal_path: str, ack_path: str, send_count: int) -> int:
    journal = Journal(journal_path)
    acks = Journal(ack_path)
    done = acknowledged(ack_path)
    todo = [n for n in range(send_count) if event_id(n) not in done]
    engine = stepwell.Engine(build_app(journal), db=f"sqlite:///{db_path}", lease_seconds=2.0,
                             fsync=True)
    async with engine:
        journal.write(e="ready", pid=os.getpid())

        async def sender() -> None:
            while todo:
                n = todo.pop(0)
                eid = await engine.send({"id": event_id(n), "name": EVENT, "data": {"n": n}})
                acks.write(id=eid, pid=os.getpid())
                await asyncio.sleep(random.uniform(*SEND_PAUSE_S))

        await asyncio.gather(*(sender() for _ in range(SENDERS)))
        while True:
            runs = await engine.runs(function_id=FUNCTION_ID, limit=send_count + 1000)
            ended = [r for r in runs if r.status not in ("queued", "running")]
            bad = [r for r in ended if r.status != "completed"]
            if bad:
                print(f"worker: {len(bad)} run(s) did not complete: "
                      f"{[(r.id, r.status, r.error) for r in bad[:5]]}", file=sys.stderr)
                return 1
            if len(ended) >= send_count:
                return 0
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    db, journal_file, ack_file, count = sys.argv[1:5]
    sys.exit(asyncio.run(main(db, journal_file, ack_file, int(count))))
