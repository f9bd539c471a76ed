"""The process's engine, built once from `settings.STEPWELL`."""

from __future__ import annotations

import threading
from typing import Any

from stepwell.core.config import ConfigError
from stepwell.core.urls import DEFAULT_DB
from stepwell.integrations.blocking import BlockingEngine
from stepwell.runtime.engine import Engine
from stepwell.sdk.app import App

_lock = threading.Lock()
_engine: BlockingEngine | None = None


def settings_dict() -> dict[str, Any]:
    from django.conf import settings

    value = getattr(settings, "STEPWELL", {})
    if not isinstance(value, dict):
        raise ConfigError("settings.STEPWELL must be a dict (keys APP, DB, WORKER)")
    unknown = set(value) - {"APP", "DB", "WORKER"}
    if unknown:
        raise ConfigError(f"settings.STEPWELL has unknown keys {sorted(unknown)}; "
                          "allowed: APP, DB, WORKER")
    return value


def load_apps(target: object) -> list[App]:
    """`STEPWELL["APP"]`: "module:attr" naming an App or a list of Apps (or the objects)."""
    if target is None:
        return []
    if isinstance(target, str):
        from importlib import import_module

        module_name, _, attr = target.partition(":")
        if not attr:
            raise ConfigError(f"STEPWELL['APP'] = {target!r}: write 'module:attribute'")
        target = getattr(import_module(module_name), attr)
    found = list(target) if isinstance(target, list | tuple) else [target]
    apps = [a for a in found if isinstance(a, App)]
    if len(apps) != len(found) or not apps:
        raise ConfigError("STEPWELL['APP'] must name a stepwell.App or a list of them")
    return apps


def app_target() -> str | None:
    target = settings_dict().get("APP")
    return target if isinstance(target, str) else None


def db_url() -> str:
    return str(settings_dict().get("DB") or DEFAULT_DB)


def engine() -> BlockingEngine:
    """This process's engine (built on first use; started on first send)."""
    global _engine
    with _lock:
        if _engine is None:
            config = settings_dict()
            _engine = BlockingEngine(Engine(*load_apps(config.get("APP")), db=db_url(),
                                            worker=bool(config.get("WORKER", False))))
        return _engine
