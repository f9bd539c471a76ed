"""The app and worker process of the Postgres chaos test (`test_chaos.py`); not a test module.

    python chaos_app.py DB_URL JOURNAL_PATH

Runs a worker engine on DB_URL until SIGTERM (or, more likely, SIGKILL). Each run of `chain`
executes five step bodies, a real sleep and a wait for a `chaos/resume` event (which the test
sends once the wait is registered).

The journal (append-only JSON lines, one `os.write` each, so a SIGKILL never tears a line):
- `{"e": "ready", "pid"}` once the engine has started;
- `{"e": "start" | "end", "run", "step", "pid", "x"}` around every execution of a step body
  (`x` is a fresh id; the body returns it, so the committed memo names its execution);
- `{"e": "lease_lost", "run", "pid"}` when this process learns another took a run over (its
  lease expired, e.g. while Postgres was restarting): a legitimate cause of re-execution.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import sys
import uuid
from typing import Any

import stepwell

EVENT = "chaos/go"
RESUME = "chaos/resume"
FUNCTION_ID = "chaos/chain"
RUN_STEPS = ["load", "enrich", "combine", "audit", "finish"]
STEPS = [("load", "run"), ("enrich", "run"), ("nap", "sleep"), ("combine", "run"),
         ("approve", "wait"), ("audit", "run"), ("finish", "run")]
STEP_WORK_S = (0.002, 0.03)
LEASE_SECONDS = 3.0


def token(n: int) -> str:
    return f"t{n * 7 % 1000}"


def expected_values(n: int) -> dict[str, Any]:
    a = n * 3 + 1
    b = a + n % 7
    c = a * 2 + b
    d = f"{c}:{token(n)}"
    return {"load": a, "enrich": b, "combine": c, "audit": d, "finish": f"n{n}:{d}"}


def expected_output(n: int) -> dict[str, Any]:
    v = expected_values(n)
    return {"n": n, "c": v["combine"], "result": v["finish"]}


class Journal:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, **record: Any) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        assert os.write(self.fd, line) == len(line)


class LeaseLostToJournal(logging.Handler):
    """Journals the engine's "lease lost" notices (INFO on logger stepwell.run)."""

    pattern = re.compile(r"run (\S+): lease lost")

    def __init__(self, journal: Journal) -> None:
        super().__init__(logging.INFO)
        self.journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        found = self.pattern.match(record.getMessage())
        if found:
            self.journal.write(e="lease_lost", run=found.group(1), pid=os.getpid())


def build_app(journal: Journal | None) -> stepwell.App:
    app = stepwell.App("chaos")
    pid = os.getpid()

    def body(step_id: str, value: Any) -> Any:
        async def run(run_id: str) -> dict[str, Any]:
            exec_id = uuid.uuid4().hex
            assert journal is not None, "the producer never runs step bodies"
            journal.write(e="start", run=run_id, step=step_id, pid=pid, x=exec_id)
            await asyncio.sleep(random.uniform(*STEP_WORK_S))
            journal.write(e="end", run=run_id, step=step_id, pid=pid, x=exec_id)
            return {"v": value, "x": exec_id}
        return run

    @app.function(id="chain", trigger=EVENT, retries=0)
    async def chain(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
        n = ctx.event.data["n"]
        v = expected_values(n)
        a = (await step.run("load", body("load", v["load"]), ctx.run_id))["v"]
        b = (await step.run("enrich", body("enrich", a + n % 7), ctx.run_id))["v"]
        await step.sleep("nap", "100ms")
        c = (await step.run("combine", body("combine", a * 2 + b), ctx.run_id))["v"]
        approval = await step.wait_for_event("approve", event=RESUME, timeout="1h",
                                             match="data.n")
        assert approval is not None, "the approval wait timed out"
        d = (await step.run("audit", body("audit", f"{c}:{approval.data['token']}"),
                            ctx.run_id))["v"]
        result = (await step.run("finish", body("finish", f"n{n}:{d}"), ctx.run_id))["v"]
        return {"n": n, "c": c, "result": result}

    return app


async def main(db: str, journal_path: str) -> None:
    journal = Journal(journal_path)
    logging.getLogger("stepwell.run").addHandler(LeaseLostToJournal(journal))
    logging.getLogger("stepwell.run").setLevel(logging.INFO)
    engine = stepwell.Engine(build_app(journal), db=db, lease_seconds=LEASE_SECONDS)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with engine:
        journal.write(e="ready", pid=os.getpid())
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
