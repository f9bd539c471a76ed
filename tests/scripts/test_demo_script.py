"""The README's first command on a fresh clone with nothing but Python: `bash scripts/demo.sh`
installs the runtime dependencies only and runs the demo, with Node.js, npm and Chromium out of
reach (they are the test command's business).

Slow (a new virtualenv and a pip install, from pip's cache when it has the wheels), so it runs in
`bash .ci/slow`. It clones the committed tree (HEAD), as a new user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = {"node", "nodejs", "npm", "npx", "corepack", "chromium", "chromium-browser"}


def _path_without_node(bin_dir: Path) -> str:
    """A PATH with every command of /usr/bin and /bin but Node's and Chromium's, and python3
    the interpreter this venv was made from."""
    bin_dir.mkdir()
    for folder in (Path("/usr/bin"), Path("/bin")):
        for entry in folder.iterdir():
            target = bin_dir / entry.name
            if entry.name not in HIDDEN and not target.exists():
                target.symlink_to(entry)
    python = bin_dir / "python3"
    python.unlink(missing_ok=True)
    python.symlink_to(Path(getattr(sys, "_base_executable", sys.executable)).resolve())
    return str(bin_dir)


@pytest.mark.slow
def test_demo_sh_on_a_fresh_clone_without_node(tmp_path: Path) -> None:
    clone = tmp_path / "stepwell"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    path = _path_without_node(tmp_path / "bin")
    assert shutil.which("npm", path=path) is None and shutil.which("node", path=path) is None
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": path,
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("demo: ")]
    assert progress == [
        progress[0],                     # "creating .venv with Python 3.x.y"
        "demo: installing stepwell (.) and its pinned dependencies into .venv (pip)",
        "demo: running examples/demo.py"], done.stderr
    assert progress[0].startswith("demo: creating .venv with Python 3.")
    assert "10/10 runs ended as expected" in done.stdout
    assert ".venv/bin/stepwell dev examples/demo.py:APPS" in done.stdout
    installed = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "list",
                                "--format=freeze"], capture_output=True, text=True, check=True)
    names = {line.split("==")[0].lower() for line in installed.stdout.splitlines()}
    assert "stepwell" in names and not names & {"pytest", "mypy", "playwright", "mkdocs"}

    again = subprocess.run(["bash", "scripts/demo.sh"], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line for line in again.stderr.splitlines() if line.startswith("demo: ")] == [
        "demo: running examples/demo.py"]                        # nothing to install twice
