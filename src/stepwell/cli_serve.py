"""Running the HTTP server from the command line (`stepwell dev | serve | start`): binding the
socket, the start-up banner, the engine then the server with a clean stop on SIGINT/SIGTERM,
and syncing the SDK apps given with `-u`.

Imported by `stepwell.cli` at start-up, so it imports only what any command needs; the server,
uvicorn and the engine are imported by the functions that run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from stepwell import cli_client
from stepwell.core.urls import redact

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from stepwell.sdk.app import App
    from stepwell.service import Service


def listen(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a busy port fails fast with a clear message.

    The socket is made with proto=IPPROTO_TCP and TCP_NODELAY: asyncio sets TCP_NODELAY on
    the connections it accepts only when the listening socket says IPPROTO_TCP (and
    `socket.create_server` says 0), and without it every reply that follows a small write
    waits for the client's delayed ACK (~40 ms per request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                                   ) from exc
    return sock


async def start_service(service: Service) -> None:
    """Start the engine. A database that cannot be used (wrong or unreachable URL, a schema
    from a newer stepwell) is one clear error naming the URL, not a traceback."""
    try:
        await service.start()
    except RuntimeError as exc:        # the store's StoreError
        raise click.ClickException(str(exc)) from exc


def banner(url: str, db: str, apps: Sequence[App]) -> str:
    lines = [f"stepwell server running at {url}  (db: {redact(db)})", "functions:"]
    example = None
    for app in apps:
        for fn in app.functions.values():
            triggers = ", ".join(
                getattr(t, "name", None) or f"cron {getattr(t, 'source', '?')}"
                for t in fn.spec.triggers)
            lines.append(f"  {fn.qualified_id:<40} <- {triggers}")
            example = example or next((getattr(t, "name", None) for t in fn.spec.triggers
                                       if "*" not in getattr(t, "name", "*")), None)
    if len(lines) == 2:
        lines.append("  (none)")
    lines.append(f"dashboard:      {url}/dashboard")
    target = "" if url == cli_client.DEFAULT_URL else f" --url {url}"
    if example:
        lines.append(f"send an event:  stepwell send {example} --data '{{}}'{target}")
    lines.append(f"list runs:      stepwell runs list{target}")
    lines.append("press Ctrl+C to stop")
    return "\n".join(lines)


SHUTDOWN_GRACE_S = float(os.environ.get("STEPWELL_SHUTDOWN_GRACE_S", "30"))


def _quiet_server(uvicorn: Any) -> Any:
    """uvicorn's Server without its own signal handling: it swaps in handlers while serving
    and raises the signals it caught again when it returns, so each signal would reach
    `Shutdown` twice and one SIGTERM would look like two. (uvicorn is imported lazily.)"""

    class QuietServer(uvicorn.Server):  # type: ignore[misc]
        def capture_signals(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

    return QuietServer


class Shutdown:
    """SIGINT/SIGTERM: the first asks for a clean stop (`on_request`); a second one, or the
    clean stop taking longer than `SHUTDOWN_GRACE_S` (a step body that never returns keeps its
    thread, and the interpreter waits for it at exit), ends the process at once. That is safe:
    every acknowledged event and committed step is on disk, and what was running is resumed
    by the next process, exactly as after a crash."""

    def __init__(self, on_request: Callable[[], None]) -> None:
        self.on_request = on_request
        self.requested = False

    def __call__(self) -> None:
        if self.requested:
            self.now("a second signal")
        self.requested = True
        timer = threading.Timer(SHUTDOWN_GRACE_S, self.now,
                                args=(f"the clean stop taking over {SHUTDOWN_GRACE_S:g} s",))
        timer.daemon = True
        timer.start()
        self.on_request()

    @staticmethod
    def now(why: str) -> None:
        sys.stderr.write(f"stepwell: stopping now ({why}); unfinished work resumes on the "
                         "next start\n")
        sys.stderr.flush()
        os._exit(1)


@dataclass(frozen=True)
class Exposure:
    """How the server faces the network: the Host names it answers to, the app URLs it may
    call, and its connection limits (see docs/security.md)."""

    allowed_hosts: tuple[str, ...] = ()
    app_url_allow: tuple[str, ...] = ()
    header_timeout: float = 10.0
    max_connections: int | None = None
    sdk_concurrency: int = 32        # calls in flight to each SDK app at most


def make_asgi(service: Service, host: str, *, event_keys: Sequence[str] = (),
              signing_keys: Sequence[str] = (), exposure: Exposure = Exposure()) -> Starlette:
    """The HTTP app; weak keys or a malformed host list are one clear error, before binding."""
    from stepwell.core.config import ConfigError
    from stepwell.server.app import create_app
    from stepwell.server.guard import allowed_hosts

    try:
        return create_app(service, event_keys=list(event_keys) or None,
                          signing_keys=list(signing_keys) or None,
                          allowed_hosts=allowed_hosts(exposure.allowed_hosts, host))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def exposure_warning(host: str, exposure: Exposure) -> str | None:
    """A hint when the server listens on every interface but answers only to loopback names."""
    from stepwell.server.guard import LOOPBACK_HOSTS

    if host.strip() in ("0.0.0.0", "::", "") and not exposure.allowed_hosts:
        return (f"listening on all interfaces ({host}), but answering only to the Host names "
                f"{', '.join(LOOPBACK_HOSTS)}: add the names clients use with --allowed-host "
                "(see docs/security.md)")
    return None


async def serve(service: Service, sock: socket.socket, apps: Sequence[App], db: str,
                app: Starlette, *, sync_urls: Sequence[str] = (),
                signing_keys: Sequence[str] = (), exposure: Exposure = Exposure()) -> None:
    """Engine, then server; on SIGINT/SIGTERM the server drains and the engine stops cleanly."""
    import uvicorn

    from stepwell.server.connections import ConnectionLimits, server_config

    limits = ConnectionLimits(header_timeout=exposure.header_timeout,
                              max_connections=exposure.max_connections)
    config = server_config(app, limits, lifespan="off", log_level="warning", access_log=False,
                           timeout_graceful_shutdown=5)
    server = _quiet_server(uvicorn)(config)
    loop = asyncio.get_running_loop()

    def request_exit() -> None:
        server.should_exit = True

    # Ours are the only handlers (see `_quiet_server`): the first signal stops the server, then the
    # engine; a second one, or a stop past its grace, ends the process (`Shutdown`).
    shutdown = Shutdown(request_exit)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, shutdown)
    await start_service(service)
    syncing: list[asyncio.Task[None]] = []
    try:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        click.echo(banner(f"http://{shown}:{port}", db, apps))
        warning = exposure_warning(str(host), exposure)
        if warning:
            click.echo(f"warning: {warning}", err=True)
        syncing = [asyncio.create_task(sync_when_up(service, url, signing_keys))
                   for url in sync_urls]
        await server.serve(sockets=[sock])
    finally:
        for task in syncing:
            task.cancel()
        await service.stop()
        click.echo("stepwell stopped")


async def sync_when_up(service: Service, url: str, signing_keys: Sequence[str],
                       attempts: int = 30) -> None:
    """Sync an SDK app given with -u, retrying while it starts up (as `inngest dev -u`)."""
    from stepwell.service_errors import ServiceError, SyncRefused

    for attempt in range(attempts):
        try:
            result = await service.sync_app(url, signing_key=signing_keys[0] if signing_keys
                                            else None)
        except ServiceError as exc:
            # A refused registration names the function and why, and a URL outside
            # --app-url-allow (403) stays outside: retrying cannot help.
            if isinstance(exc, SyncRefused) or exc.status == 403 or attempt == attempts - 1:
                click.echo(f"could not sync {url}: {exc.message}", err=True)
                return
            await asyncio.sleep(min(0.2 * 2 ** attempt, 5))
        else:
            click.echo(f"synced app {result['app_id']} from {url}: "
                       f"{', '.join(result['functions']) or 'no functions'}")
            return
