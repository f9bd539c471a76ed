"""The `stepwell` command line: a thin shell over the service layer and the HTTP API.

`stepwell dev` and `stepwell start` run an engine and the HTTP server in one process,
`stepwell worker` an engine alone (workers sharing a Postgres database scale a deployment out);
every other command is an HTTP client of that server, so it works the same against a local dev
server or a remote one and never opens the database itself (two writers on one SQLite file from
a CLI would be a footgun).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stepwell import cli_client, cli_deploy, cli_logging
from stepwell.cli_serve import (
    Exposure,
    Shutdown,
    listen,
    make_asgi,
    serve,
    start_service,
)
from stepwell.core.urls import DEFAULT_DB, redact

if TYPE_CHECKING:

    from stepwell.sdk.app import App
    from stepwell.service import Service

# The engine, the server and their dependencies are imported by the commands that run them,
# not here: `stepwell send` and `stepwell runs ...` only make HTTP calls and must start fast.
DEV_RETRY_INTERVAL = 1.0    # `stepwell dev` retries after this many seconds x attempt

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
@click.version_option(package_name="stepwell", prog_name="stepwell",
                      message="%(prog)s %(version)s")   # from the installed package's metadata
def main() -> None:
    """stepwell: durable functions for Python, in the Inngest model."""


# --- loading user code -----------------------------------------------------------------------


def split_target(target: str) -> tuple[str, str | None]:
    """`path/to/file.py:attr` or `package.module:attr`; the attribute part is optional."""
    head, sep, attr = target.rpartition(":")
    if sep and head and attr.isidentifier():
        return head, attr
    return target, None


def import_target(where: str) -> ModuleType:
    """Import a Python file (its directory goes on `sys.path`, so its own imports work) or a
    module name (resolved from the current directory, as `python -m` would)."""
    path = Path(where)
    if where.endswith(".py") or path.is_file():
        if not path.is_file():
            raise click.ClickException(f"no such file: {where}")
        path = path.resolve()
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise click.ClickException(f"cannot import {where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        _run_user_code(where, lambda: spec.loader.exec_module(module))  # type: ignore[union-attr]
        return module
    sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise click.ClickException(f"{where!r} is neither a Python file nor an importable module")
    loaded: list[ModuleType] = []
    _run_user_code(where, lambda: loaded.append(importlib.import_module(where)))
    return loaded[0]


def _run_user_code(where: str, load: Callable[[], object]) -> None:
    """Import-time errors in the user's code keep their traceback (it is the user's bug);
    stepwell configuration errors are already written for people, so they are shown alone."""
    from stepwell.core.config import ConfigError

    try:
        load()
    except ConfigError as exc:
        raise click.ClickException(f"{where}: {exc}") from exc
    except Exception as exc:
        raise click.ClickException(f"cannot import {where}:\n{traceback.format_exc()}") from exc


def load_apps(target: str) -> list[App]:
    """The `stepwell.App` objects named by `target` (see `stepwell dev --help`)."""
    from stepwell.sdk.app import App

    where, attr = split_target(target)
    module = import_target(where)
    if attr is not None:
        if not hasattr(module, attr):
            raise click.ClickException(f"{where} has no attribute {attr!r}")
        value = getattr(module, attr)
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values or not all(isinstance(v, App) for v in values):
            raise click.ClickException(
                f"{where}:{attr} must be a stepwell.App or a list of them, "
                f"got {type(value).__name__}")
        return values
    apps: list[App] = []
    for value in vars(module).values():
        if isinstance(value, App) and all(value is not a for a in apps):
            apps.append(value)
    if not apps:
        raise click.ClickException(f"no stepwell.App found in {where}; name one with "
                                   f"{where}:<attribute>")
    return apps


# --- stepwell dev | serve | start | worker (running a server: cli_serve) ---------------------


retention_option = click.option(
    "--retention", default="7d", show_default=True, metavar="DURATION|none",
    help="Delete finished runs (and events nothing refers to) this long after they end; at "
         "least 1d; 'none' keeps everything.")


def engine_retention(value: str) -> str | None:
    return None if value.strip().lower() in ("none", "off", "forever") else value


def _remember_logging(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Kept in the environment, so `stepwell dev`'s reloaded generations log (and trace) the
    same way."""
    if value is not None:
        os.environ[str(param.envvar)] = value


log_options = [
    click.option("--log-level", type=click.Choice(cli_logging.LEVELS, case_sensitive=False),
                 envvar="STEPWELL_LOG_LEVEL", expose_value=False, callback=_remember_logging,
                 help="Log this level and above (default info; env STEPWELL_LOG_LEVEL)."),
    click.option("--log-format", type=click.Choice(cli_logging.FORMATS), expose_value=False,
                 envvar="STEPWELL_LOG_FORMAT", callback=_remember_logging,
                 help="text (default) for people, json (one object per line) for log "
                      "shippers; env STEPWELL_LOG_FORMAT."),
]


otlp_option = click.option(
    "--otlp-endpoint", metavar="URL", envvar="STEPWELL_OTLP_ENDPOINT", expose_value=False,
    callback=_remember_logging,
    help="Export traces of runs over OTLP/HTTP to this collector (spans go to URL/v1/traces; "
         "needs `pip install 'stepwell[otel]'`). Default: OTEL_EXPORTER_OTLP_ENDPOINT.")
log_options.append(otlp_option)


def with_log_options(fn: F) -> F:
    for option in reversed(log_options):
        fn = option(fn)
    return fn


def setup_logging() -> None:
    cli_logging.configure(os.environ.get("STEPWELL_LOG_LEVEL", "info"),
                          os.environ.get("STEPWELL_LOG_FORMAT", "text"))


def server_options(fn: F) -> F:
    """Options shared by the commands that run a server."""
    for option in reversed([
        click.option("--db", default=DEFAULT_DB, show_default=True, help="Database URL."),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", default=8288, show_default=True,
                     type=click.IntRange(0, 65535)),
        click.option("-u", "--sdk-url", "sync_urls", multiple=True, metavar="URL",
                     help="Sync the official-SDK app served at URL on start-up (repeatable)."),
        click.option("--event-key", "event_keys", multiple=True, envvar="INNGEST_EVENT_KEY",
                     help="Accept events only with this key (repeatable); none: dev mode."),
        click.option("--signing-key", "signing_keys", multiple=True,
                     envvar="INNGEST_SIGNING_KEY",
                     help="Sign requests to SDK apps and require it from them; none: dev mode."),
        click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
                     envvar="STEPWELL_ALLOWED_HOSTS",
                     help="Also answer to this Host name (repeatable, comma-separated; "
                          "host, host:port, .domain, or * for any). Always allowed: "
                          "localhost, 127.0.0.1, [::1] and the --host bound to."),
        click.option("--app-url-allow", "app_url_allow", multiple=True, metavar="HOSTS",
                     envvar="STEPWELL_APP_URL_ALLOW",
                     help="Only call URLs (app sync, registration, runs, step.fetch) whose host "
                          "is in this list: names, .domains, IPs or networks, e.g. "
                          "127.0.0.0/8,app.internal (repeatable). Default: any URL."),
        click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0,
                     show_default=True, metavar="SECONDS",
                     help="Close connections whose request head takes longer than this."),
        click.option("--max-connections", type=click.IntRange(min=1), default=None,
                     metavar="N",
                     help="Open HTTP connections at most; past it the longest-idle one is "
                          "closed. Default: 1000, or half the file-descriptor limit."),
        click.option("--retry-interval", type=click.FloatRange(min=0.0), default=None,
                     metavar="SECONDS",
                     help="Retry failed steps after SECONDS x attempt instead of the "
                          "exponential backoff (for local development)."),
        click.option("--sdk-concurrency", type=click.IntRange(min=1), default=32,
                     show_default=True, envvar="STEPWELL_SDK_CONCURRENCY", metavar="N",
                     help="Requests in flight to each official-SDK app at most; further runs "
                          "wait their turn, in order."),
        retention_option,
        *log_options,
    ]):
        fn = option(fn)
    return fn


def make_service(apps: list[App], db: str, *, worker: bool = True,
                 signing_keys: Sequence[str] = (), retry_interval: float | None = None,
                 retention: str = "7d", app_url_allow: Sequence[str] = (),
                 load_error: str | None = None, check_determinism: bool = False,
                 sdk_concurrency: int = 32) -> Service:
    """The service over a new engine; invalid options are one clear error."""
    from stepwell.core.config import ConfigError
    from stepwell.service import Service

    try:
        service = Service.for_apps(apps, db=db, worker=worker,
                                   signing_key=signing_keys[0] if signing_keys else None,
                                   retry_interval_seconds=retry_interval,
                                   retention=engine_retention(retention),
                                   app_url_allow=list(app_url_allow) or None,
                                   check_determinism=check_determinism,
                                   sdk_concurrency=sdk_concurrency)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    service.load_error = load_error
    return service


def run_server(apps: list[App], db: str, host: str, port: int, *, worker: bool = True,
               sync_urls: Sequence[str] = (), event_keys: Sequence[str] = (),
               signing_keys: Sequence[str] = (), retry_interval: float | None = None,
               retention: str = "7d", exposure: Exposure = Exposure(),
               sock: socket.socket | None = None, load_error: str | None = None,
               check_determinism: bool = False,
               on_service: Callable[[Service], object] | None = None) -> None:
    setup_logging()
    service = make_service(apps, db, worker=worker, signing_keys=signing_keys,
                           retry_interval=retry_interval, retention=retention,
                           app_url_allow=exposure.app_url_allow, load_error=load_error,
                           check_determinism=check_determinism,
                           sdk_concurrency=exposure.sdk_concurrency)
    if on_service is not None:        # `stepwell dev` updates its load_error (cli_dev)
        on_service(service)
    app = make_asgi(service, host, event_keys=event_keys, signing_keys=signing_keys,
                    exposure=exposure)
    sock = sock or listen(host, port)
    try:
        asyncio.run(serve(service, sock, apps, db, app, sync_urls=sync_urls,
                          signing_keys=signing_keys, exposure=exposure))
    finally:
        sock.close()


@main.command()
@click.argument("target", metavar="[PATH_OR_MODULE[:ATTR]]", required=False)
@server_options
@click.option("--reload/--no-reload", default=True, show_default=True,
              help="Swap in the code when a .py file next to the app changes and it imports "
                   "(runs resume where they were); until then the last code that imported "
                   "keeps serving.")
@click.option("--production-backoff", is_flag=True,
              help="Retry failed steps with the production exponential backoff instead of "
                   f"dev's {DEV_RETRY_INTERVAL:g} s x attempt.")
def dev(target: str | None, db: str, host: str, port: int, sync_urls: tuple[str, ...],
        event_keys: tuple[str, ...], signing_keys: tuple[str, ...],
        allowed_hosts: tuple[str, ...], app_url_allow: tuple[str, ...],
        header_timeout: float, max_connections: int | None,
        retry_interval: float | None, sdk_concurrency: int, retention: str, reload: bool,
        production_backoff: bool) -> None:
    """Run the engine and HTTP server for the apps in a file or module (and any official-SDK
    apps synced with -u or /v1/apps/sync).

    Without ATTR every stepwell.App defined at the top level is served; ATTR may name one App
    or a list of Apps. Failed steps are retried after 1 s x attempt (not the production
    backoff of up to minutes), so a fix is tried at once; --production-backoff or
    --retry-interval change that.
    """
    if retry_interval is None and not production_backoff:
        retry_interval = DEV_RETRY_INTERVAL
    apps = load_apps(target) if target else []      # fail fast, before watching anything
    exposure = Exposure(allowed_hosts, app_url_allow, header_timeout, max_connections,
                        sdk_concurrency)
    options: dict[str, Any] = dict(sync_urls=sync_urls, event_keys=event_keys,
                                   signing_keys=signing_keys, retry_interval=retry_interval,
                                   retention=retention, exposure=exposure,
                                   check_determinism=True)
    if not (reload and target):
        run_server(apps, db, host, port, **options)
        return
    checked = make_service(apps, db, signing_keys=signing_keys, retry_interval=retry_interval,
                           retention=retention, app_url_allow=app_url_allow,
                           sdk_concurrency=sdk_concurrency)
    make_asgi(checked, host, event_keys=event_keys, signing_keys=signing_keys,
              exposure=exposure)                     # options checked before watching
    from stepwell.cli_dev import run_dev

    sock = listen(host, port)       # kept across restarts: clients never see the port close
    try:
        run_dev(target, db, host, port, sock, options)   # the last code that imports serves
    finally:
        sock.close()


@main.command("serve")
@server_options
@click.option("--no-worker", is_flag=True,
              help="Serve the APIs only; separate `stepwell worker` processes execute runs.")
def serve_command(db: str, host: str, port: int, sync_urls: tuple[str, ...],
                  event_keys: tuple[str, ...], signing_keys: tuple[str, ...],
                  allowed_hosts: tuple[str, ...], app_url_allow: tuple[str, ...],
                  header_timeout: float, max_connections: int | None,
                  retry_interval: float | None, sdk_concurrency: int, retention: str,
                  no_worker: bool) -> None:
    """Run the server for apps written with the official Inngest SDKs: event API, SDK
    endpoint, REST API. Production mode when event or signing keys are given."""
    run_server([], db, host, port, worker=not no_worker, sync_urls=sync_urls,
               event_keys=event_keys, signing_keys=signing_keys, retry_interval=retry_interval,
               retention=retention, exposure=Exposure(allowed_hosts, app_url_allow,
                                                      header_timeout, max_connections,
                                                      sdk_concurrency))


@main.command()
@click.argument("target", metavar="PATH_OR_MODULE[:ATTR]")
@server_options
def start(target: str, db: str, host: str, port: int, sync_urls: tuple[str, ...],
          event_keys: tuple[str, ...], signing_keys: tuple[str, ...],
          allowed_hosts: tuple[str, ...], app_url_allow: tuple[str, ...],
          header_timeout: float, max_connections: int | None,
          retry_interval: float | None, sdk_concurrency: int, retention: str) -> None:
    """Run the apps of a file or module in production: the HTTP server (event API, REST API,
    SDK endpoint) and a worker, on the database --db.

    On Postgres (--db postgresql://user:password@host:5432/db) start any number of
    `stepwell worker` processes for the same apps and database, on any hosts: they share the
    work, and any of them may stop or die at any time.
    """
    run_server(load_apps(target), db, host, port, sync_urls=sync_urls, event_keys=event_keys,
               signing_keys=signing_keys, retry_interval=retry_interval, retention=retention,
               exposure=Exposure(allowed_hosts, app_url_allow, header_timeout,
                                 max_connections, sdk_concurrency))


@main.command()
@click.argument("target", metavar="PATH_OR_MODULE[:ATTR]")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Database URL.")
@retention_option
@with_log_options
def worker(target: str, db: str, retention: str) -> None:
    """Run the functions of the apps in a file or module, without an HTTP server.

    A worker claims runs, timers and cron ticks from the database --db (use the same one as
    `stepwell start`): on Postgres, any number of workers on any hosts share the work; a run
    held by a worker that dies is taken over by another once its lease expires. Events reach
    it through `stepwell start` / `stepwell serve` or `Engine.send` in another process.
    SIGINT or SIGTERM stops it cleanly (what it was running is handed back at once).
    """
    setup_logging()
    apps = load_apps(target)
    service = make_service(apps, db, retention=retention)
    asyncio.run(run_worker(service, apps, db))


async def run_worker(service: Service, apps: Sequence[App], db: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    shutdown = Shutdown(stopping.set)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, shutdown)
    await start_service(service)
    try:
        functions = [fn.qualified_id for app in apps for fn in app.functions.values()]
        click.echo(f"stepwell worker running (db: {redact(db)}, pid {os.getpid()}); "
                   f"functions: {', '.join(functions) or '(none)'}")
        await stopping.wait()
    finally:
        await service.stop()
        click.echo("stepwell worker stopped")


# --- HTTP client commands (send, runs ..., functions ...) live in cli_client ----------------------

main.add_command(cli_client.send)
main.add_command(cli_client.runs)
main.add_command(cli_client.functions)
cli_client.runs.add_command(cli_deploy.runs_export)
main.add_command(cli_deploy.check)
main.add_command(cli_deploy.versions)


if __name__ == "__main__":
    main()
