"""Profile stepwell on one benchmark workload with py-spy and print the top costs.

    python bench/profile_stepwell.py [--workload W3] [-n 20000] [--rate 500] [--gil]
        [--stepwell-ref REF]

py-spy comes from the peers venv (bench/.peers-venv, created by `bench/run.py` or by this
script), never from stepwell's dependencies. It samples every thread of a fresh
`bench/sw_bench.py` process; the raw stacks go to `bench/results/profile-<workload>.txt` (feed
them to flamegraph.pl or speedscope) and the summary (by thread, self time by line, inclusive
time by function) to `bench/results/profile-<workload>.md`. `--gil` samples only the thread
holding the GIL: on a 2-core machine that is the Python CPU time that limits throughput.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import run as harness

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(path: str) -> str:
    """Make a frame's file readable: stepwell's files as src/stepwell/..., the rest trimmed."""
    if "stepwell/" in path and "site-packages" not in path and "bench" not in path:
        return "src/stepwell/" + path.split("stepwell/", 1)[1]
    for marker in ("site-packages/", "lib/python3.11/", "bench/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse(raw: Path) -> list[tuple[str, list[tuple[str, str, str]], int]]:
    stacks = []
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        body, _, count = line.rpartition(" ")
        frames = body.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
        parsed = []
        for frame in frames:
            found = FRAME.match(frame)
            if found:
                parsed.append((found["func"], short(found["file"]), found["line"] or ""))
        stacks.append((thread, parsed, int(count)))
    return stacks


def summarize(stacks: list[tuple[str, list[tuple[str, str, str]], int]], top: int) -> str:
    total = sum(c for _, _, c in stacks) or 1
    threads: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    startup = 0
    for thread, frames, count in stacks:
        if any(f[0] == "_find_and_load" for f in frames):
            startup += count          # imports: start-up, not the workload
            continue
        threads[_thread_kind(thread, frames)] += count
        if not frames:
            continue
        func, file, line = frames[-1]
        self_line[f"{func} ({file}:{line})"] += count
        self_fn[f"{func} ({file})"] += count
        seen = set()
        for func, file, _line in frames:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                incl_fn[key] += count
        # The innermost stepwell frame: "where in stepwell" the time goes, whatever it calls.
        for func, file, line in reversed(frames):
            if file.startswith("src/stepwell/"):
                incl_fn[f"[innermost stepwell line] {func} ({file}:{line})"] += count
                break

    def table(title: str, counter: collections.Counter[str], keep: str = "") -> list[str]:
        rows = [f"### {title}", "", "| % samples | frame |", "|---:|---|"]
        items = [(k, v) for k, v in counter.most_common() if keep in k]
        for key, value in items[:top]:
            name = key.replace("[innermost stepwell line] ", "")
            rows.append(f"| {value / total * 100:.1f} | `{name}` |")
        return [*rows, ""]

    out = [f"{total} samples ({startup / total * 100:.0f}% in imports at start-up, left out "
           "below; percentages are of all samples)", ""]
    out += table("by thread", threads)
    out += table("self time by line (leaf frames)", self_line)
    out += table("self time by function", self_fn)
    out += table("innermost stepwell line on the stack (inclusive of what it calls)",
                 collections.Counter({k: v for k, v in incl_fn.items()
                                      if k.startswith("[innermost")}))
    out += table("inclusive time by stepwell function", collections.Counter(
        {k: v for k, v in incl_fn.items() if "src/stepwell/" in k and not k.startswith("[")}))
    return "\n".join(out)


def _thread_kind(thread: str, frames: list[tuple[str, str, str]]) -> str:
    names = " ".join(f[0] for f in frames[:12])
    if "_write_loop" in names:
        return "SQLite writer thread (group commit)"
    if "_read_sync" in names or "stepwell-read" in thread:
        return "SQLite reader threads"
    if "run_forever" in names or "_run_once" in names:
        return "event loop (main thread)"
    if "_worker" in names and "thread" in names.lower():
        return "thread pools"
    return thread or "other"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="W3")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--option", action="append", default=[],
                        help="passed to sw_bench.py (e.g. margin=15 for wakeup)")
    parser.add_argument("--stepwell-ref", default="")
    parser.add_argument("--py-spy", default="",
                        help="a py-spy executable to use instead of the peers venv's")
    args = parser.parse_args()

    ok, reason = (True, "ok") if args.py_spy else harness.ensure_peers(skip_install=False)
    spy = Path(args.py_spy) if args.py_spy else harness.PEERS_VENV / "bin" / "py-spy"
    if not ok or not spy.exists():
        print(f"py-spy is not available: {reason}", file=sys.stderr)
        return 1
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    raw = harness.RESULTS / f"profile-{args.workload}.txt"
    with tempfile.TemporaryDirectory() as tmp:
        src = harness.export_ref(args.stepwell_ref, Path(tmp)) if args.stepwell_ref else None
        env = harness._stepwell_env(src)
        cmd = [str(spy), "record", "--format", "raw", "--threads", "--full-filenames",
               "-r", str(args.rate), "-o", str(raw)]
        if args.gil:
            cmd.append("--gil")
        cmd += ["--", harness.stepwell_python(), str(harness.BENCH / "sw_bench.py"),
                "--workload", args.workload, "-n", str(args.n), "--dir", tmp,
                "--out", str(Path(tmp) / "result.json")]
        for option in args.option:
            cmd += ["--option", option]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        result = (Path(tmp) / "result.json").read_text()
    summary = summarize(parse(raw), args.top)
    head = (f"# py-spy profile of stepwell, workload {args.workload}, n={args.n}"
            f"{', GIL holder only' if args.gil else ', all threads (idle excluded)'}\n\n"
            f"Result while profiled (slower than unprofiled):\n\n```json\n{result}\n```\n\n")
    md = harness.RESULTS / f"profile-{args.workload}{'-gil' if args.gil else ''}.md"
    md.write_text(head + summary + "\n")
    print(head + summary)
    print(f"\nwrote {raw} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
