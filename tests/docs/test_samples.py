"""Every Python code sample in the README and the docs runs, so none can rot.

Each fenced ```python block is a complete program, run as a user would run it: its own
interpreter, in a scratch directory (where its SQLite files land), with a deadline. A block
that truly cannot run on its own is marked by an HTML comment on the line before it, which
the rendered page does not show:

- `<!-- sample: not-runnable REASON -->`: skipped, and the reason is required (use it only for
  code that cannot run here, not for code that fails);
- `<!-- sample: postgres -->`: runs with `DATABASE_URL` set to a fresh Postgres database
  (the sample reads it with `os.environ`).

A sample passes when it exits 0 *and* every run it left in its SQLite files has ended: a
sample that exits while its runs are still retrying (say, on a NameError in a step) or waiting
shows nothing finished, so it fails here too.

Shell snippets are fenced as ```bash and are not collected.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!--\s*sample:\s*(?P<kind>[a-z-]+)\s*(?P<why>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Sample:
    path: Path
    line: int
    code: str
    mark: str | None
    why: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def sample_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def samples_in(path: Path) -> list[Sample]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        language = match["info"].strip().split(" ")[0].lower()
        if language not in ("python", "py"):
            continue
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        indent = len(match["indent"])
        code = "\n".join(row[indent:] for row in match["body"].splitlines())
        found.append(Sample(path, line, code + "\n", mark["kind"] if mark else None,
                            mark["why"] if mark else ""))
    return found


SAMPLES = [s for path in sample_files() for s in samples_in(path)]


def test_the_samples_are_found() -> None:
    """The collector sees every Python fence (a broken pattern would otherwise pass by running
    none), and every skip says why."""
    for path in sample_files():
        fences = re.findall(r"^ *```(?:python|py)\b", path.read_text(), re.MULTILINE)
        assert len(samples_in(path)) == len(fences), path
    files = {s.path.name for s in SAMPLES}
    assert {"README.md", "quickstart.md", "concepts.md"} <= files, files
    for sample in SAMPLES:
        assert sample.mark in (None, "not-runnable", "postgres"), sample.name
        if sample.mark == "not-runnable":
            assert sample.why, f"{sample.name}: say why the sample cannot run"


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.mark != "postgres"],
                         ids=lambda s: s.name)
def test_sample_runs(sample: Sample, tmp_path: Path) -> None:
    if sample.mark == "not-runnable":
        pytest.skip(f"{sample.name}: {sample.why}")
    _run(sample, tmp_path, {})


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.mark == "postgres"],
                         ids=lambda s: s.name)
def test_postgres_sample_runs(sample: Sample, tmp_path: Path, pg_database: str) -> None:
    _run(sample, tmp_path, {"DATABASE_URL": pg_database})


def _run(sample: Sample, tmp_path: Path, env: dict[str, str]) -> None:
    script = tmp_path / "sample.py"
    script.write_text(sample.code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=DEADLINE_S, check=False,
                          env={**os.environ, "PYTHONPATH": "",
                               # a sample that runs pytest gets a plain one, as a user's
                               # project would (this venv's plugins, schemathesis and
                               # playwright among them, take seconds to load)
                               "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env})
    assert done.returncode == 0, (
        f"{sample.name} failed (exit {done.returncode}):\n--- code\n{sample.code}"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}")
    open_runs = _open_runs(tmp_path)
    assert not open_runs, f"{sample.name} exited with runs that had not ended: {open_runs}"


ENDED = ("completed", "failed", "cancelled", "skipped")


def _open_runs(folder: Path) -> list[tuple[str, str, str]]:
    """(database, function, status) of every run not ended, in the SQLite files under folder."""
    found = []
    for db in sorted(folder.rglob("*.db")):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT function_id, status FROM runs WHERE status NOT IN (?, ?, ?, ?)", ENDED)
            found += [(db.name, function, status) for function, status in rows]
    return found
