"""stepwell as a user installs it: the sdist and wheel a standard build (`python -m build`) makes,
installed into a fresh virtualenv and used from a folder outside the source tree.

Offline-friendly: the build runs without isolation (setuptools and build are dev dependencies),
the wheel is installed with `--no-deps`, and the fresh venv sees this venv's installed
dependencies through a `.pth` line naming its site-packages. That line adds the folder to
`sys.path` after the fresh venv's own site-packages, without processing the `.pth` files inside
it, so this venv's editable install of stepwell stays inactive: the test checks that what runs is
the installed wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "stepwell"
TIMEOUT_S = 240

APP = textwrap.dedent("""
    import asyncio
    import sys

    import stepwell

    app = stepwell.App("tiny")

    @app.function(id="greet", trigger="tiny/hello")
    async def greet(ctx: stepwell.Context, step: stepwell.Step) -> str:
        name = await step.run("name", lambda: ctx.event.data["name"].title())
        return f"hello {name}"

    async def main() -> None:
        async with stepwell.Engine(app, db="sqlite:///tiny.db") as engine:
            event_id = await engine.send("tiny/hello", {"name": "ada"})
            [run] = await engine.runs(event_id=event_id)
            run = await engine.wait(run.id, timeout=30)
            print(stepwell.__file__)
            print(run.status, run.output, [s.id for s in run.steps])

    asyncio.run(main())
""")


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _package_data() -> set[str]:
    """The non-Python files of the source tree that the package needs at run time."""
    found = {p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.suffix != ".py"}
    return {p.relative_to(PACKAGE.parent).as_posix() for p in found}


def _copy_tree(into: Path) -> Path:
    """The files a build reads, copied, so no stale build/ folder can leak files into it."""
    source = into / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return source


def _fresh_venv(where: Path) -> tuple[Path, Path]:
    """(python, site-packages) of a new venv that sees this venv's dependencies (not stepwell)."""
    _run(sys.executable, "-m", "venv", "--without-pip", where, cwd=where.parent)
    python = where / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=where.parent).strip())
    (site / "_stepwell_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def _pip_install(python: Path, *args: str | Path) -> None:
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", "--disable-pip-version-check", *args, cwd=python.parent)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), as `python -m build` makes them (the sdist, then the wheel from it)."""
    work = tmp_path_factory.mktemp("build")
    source = _copy_tree(work)
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", source,
         cwd=work)
    [sdist] = (work / "dist").glob("stepwell-*.tar.gz")
    [wheel] = (work / "dist").glob("stepwell-*.whl")
    return sdist, wheel


def test_wheel_holds_the_migrations_and_the_dashboard(built: tuple[Path, Path]) -> None:
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    data = _package_data()
    assert {n for n in data if "/migrations/sqlite/" in n}, data       # the scan found them
    assert {n for n in data if "/migrations/postgres/" in n}, data
    assert "stepwell/server/static/index.html" in data
    assert data - names == set(), f"missing from the wheel: {sorted(data - names)}"
    sources = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")}
    assert sources - names == set(), f"missing from the wheel: {sorted(sources - names)}"


def test_installed_wheel_runs_an_app_outside_the_source_tree(
        built: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = built
    venv = tmp_path / "venv"
    python, fresh_site = _fresh_venv(venv)
    _pip_install(python, wheel)

    project = tmp_path / "project"             # a user's project: no stepwell source in sight
    project.mkdir()
    (project / "app.py").write_text(APP)
    where, result = _run(python, "app.py", cwd=project).splitlines()
    assert Path(where).is_relative_to(fresh_site), where   # the wheel's copy, not the source
    assert result == "completed hello Ada ['name']"
    assert (project / "tiny.db").is_file()

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _run(venv / "bin" / "stepwell", "--version", cwd=project).strip() \
        == f"stepwell {version}"


def test_sdist_holds_the_package_data(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = {f"src/{n}" for n in _package_data()} - names
    assert missing == set(), f"missing from the sdist: {sorted(missing)}"


def test_pip_install_of_a_source_path(tmp_path: Path) -> None:
    """`pip install <path>` (a git URL is the same build from a checkout): a regular install,
    not an editable one, with the package data next to the modules."""
    source = _copy_tree(tmp_path)
    python, site = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", source)
    installed = {p.relative_to(site).as_posix() for p in (site / "stepwell").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert _package_data() - installed == set()
    where = _run(python, "-c", "import stepwell.cli; print(stepwell.cli.__file__)",
                 cwd=tmp_path).strip()
    assert Path(where).is_relative_to(site), where
