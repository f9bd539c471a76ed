"""`stepwell dev --reload`: serve the code, and swap in each saved version only once it imports.

Each version of the code is served by its own process (a *generation*), all sharing one
listening socket, so clients never see the port close. On a change the watcher starts a new
generation, which first imports the code and reports back, before serving anything:

- it imported: the old generation is stopped (what it was running is handed back at once, and
  runs resume where they were: their state is in the database), then the new one serves;
- it did not (a syntax error mid-edit): the new process exits, and the old generation keeps
  serving the **last good code**: its functions keep running, events sent meanwhile start runs
  of them, and the error is shown (`/health` `load_error`, the dashboard's banner, the
  terminal) until a save imports.

Only when no version ever imported does a generation serve with no functions, showing the error.
Parent and generations talk over a pipe: `("loaded" | "failed", error)` up, `("serve",)`,
`("exit",)` or `("load_error", error)` down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from stepwell.cli import load_apps, run_server, split_target

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from stepwell.service import Service

STOP_GRACE_S = 10.0           # a stopping generation's own grace is shorter (see cli.Shutdown)
LOAD_DEADLINE_S = 120.0       # importing the code (it may import heavy libraries)
_spawn = get_context("spawn")


def watched_folder(target: str) -> Path:
    """The folder whose Python files `stepwell dev` watches: the app file's, else the current
    one (a module target is imported from there or from installed packages)."""
    where, _ = split_target(target)
    path = Path(where)
    return path.resolve().parent if path.suffix == ".py" else Path.cwd()


def generation(target: str, db: str, host: str, port: int, sock: socket.socket,
               options: dict[str, Any], conn: Connection) -> None:
    """One generation, in a fresh process: import the code, report, serve when told to.
    Until then SIGINT is ignored (the watcher ends a generation that never served with an
    `exit` message, so a Ctrl-C cannot cut its report short)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        apps, error = load_apps(target), None
    except click.ClickException as exc:
        apps, error = [], exc.format_message()
    conn.send(("loaded" if error is None else "failed", error))
    try:
        order = conn.recv()
    except (EOFError, KeyboardInterrupt):
        return
    if order[0] != "serve":
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shown: list[Service] = []

    def listen_for_errors() -> None:
        """Errors of later saves that did not import, shown while this code keeps serving."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "load_error" and shown:
                shown[0].load_error = message[1] if error is not None else (
                    f"{message[1]}\n\nStill serving the last code that imported "
                    f"({sum(len(a.functions) for a in apps)} functions) until a save imports.")

    threading.Thread(target=listen_for_errors, daemon=True).start()
    try:
        run_server(apps, db, host, port, sock=sock, load_error=error, on_service=shown.append,
                   **options)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}  (waiting for a change)", err=True)


class Generation:
    """The watcher's handle on one generation's process."""

    def __init__(self, target: str, db: str, host: str, port: int, sock: socket.socket,
                 options: dict[str, Any]) -> None:
        self.conn, child = _spawn.Pipe()
        self.process: SpawnProcess = _spawn.Process(
            target=generation, args=(target, db, host, port, sock, options, child))
        self.process.start()
        child.close()
        self.loaded_at = time.strftime("%H:%M:%S")
        self.serving = False

    def outcome(self) -> str | None:
        """None once the code imported, else the import error."""
        deadline = time.monotonic() + LOAD_DEADLINE_S
        while time.monotonic() < deadline:
            if self.conn.poll(0.2):
                try:
                    status, error = self.conn.recv()
                except EOFError:
                    break
                return None if status == "loaded" else str(error)
            if not self.process.is_alive():
                break
        self.stop()
        return "importing the code did not finish (the process exited or took over " \
               f"{LOAD_DEADLINE_S:g} s)"

    def tell(self, *message: object) -> None:
        self.serving = self.serving or message[0] == "serve"
        with contextlib.suppress(OSError):      # it exited; stop() reaps it
            self.conn.send(message)

    def stop(self) -> None:
        """Serving: SIGINT (it drains and hands its runs back); else `exit`. SIGKILL past the
        grace."""
        if self.process.is_alive() and self.process.pid is not None:
            if self.serving:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGINT)
            else:
                self.tell("exit")
            self.process.join(STOP_GRACE_S)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.conn.close()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the watcher as Ctrl-C does (then it stops the serving generation)."""
    raise KeyboardInterrupt


def run_dev(target: str, db: str, host: str, port: int, sock: socket.socket,
            options: dict[str, Any]) -> None:
    """Watch `target`'s folder and serve each version of the code that imports (see the module
    docstring), until SIGINT or SIGTERM."""
    import watchfiles

    signal.signal(signal.SIGTERM, _interrupt)
    current = candidate = Generation(target, db, host, port, sock, options)
    good = _serve_first(current)
    last_error: str | None = None     # a save often shows up as two changes: say it once
    try:
        for changes in watchfiles.watch(watched_folder(target),
                                        watch_filter=watchfiles.PythonFilter(),
                                        raise_interrupt=False):
            names = ", ".join(sorted(Path(p).name for _, p in changes))
            click.echo(f"stepwell: code changed ({names}), loading it", err=True)
            candidate = Generation(target, db, host, port, sock, options)
            error = candidate.outcome()
            if error is not None and good:
                candidate.stop()
                shown = "the same error as above" if error == last_error else f"Error: {error}"
                click.echo(f"{shown}\nstepwell: still serving the last code that imported "
                           f"(loaded at {current.loaded_at}) until a save imports (waiting for "
                           "a change)", err=True)
                current.tell("load_error", error)
                last_error = error
                continue
            last_error = error
            current.stop()            # hands its runs back; the new code resumes them
            current, good = candidate, error is None
            if error is not None:
                _no_functions(error)
            current.tell("serve")
    finally:
        if candidate is not current:
            candidate.stop()
        current.stop()


def _serve_first(first: Generation) -> bool:
    """Start the first generation; True if its code imported."""
    error = first.outcome()
    if error is not None:
        _no_functions(error)
    first.tell("serve")           # with no functions when its code did not import
    return error is None


def _no_functions(error: str) -> None:
    click.echo(f"Error: {error}\nstepwell: serving the API and dashboard with no functions "
               "until the code loads (waiting for a change)", err=True)
