"""stepwell: durable functions for Python, in the Inngest model.

Everything users need is importable from here; the subpackages are internals.
"""

from stepwell.client import Client, ClientError
from stepwell.core.config import (
    Batch,
    Cancel,
    Concurrency,
    ConfigError,
    Cron,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from stepwell.core.models import Event, InvalidEventError, Run, StepInfo
from stepwell.runtime.engine import Engine
from stepwell.sdk.app import App, Function
from stepwell.sdk.context import Context, FailureInfo
from stepwell.sdk.errors import (
    InvalidStepError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
)
from stepwell.sdk.step import Step, SyncStep

__all__ = [
    "App",
    "Batch",
    "Cancel",
    "Client",
    "ClientError",
    "Concurrency",
    "ConfigError",
    "Context",
    "Cron",
    "Debounce",
    "Engine",
    "Event",
    "FailureInfo",
    "Function",
    "InvalidEventError",
    "InvalidStepError",
    "NonDeterminismError",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Run",
    "Singleton",
    "Step",
    "StepError",
    "StepInfo",
    "SyncStep",
    "Throttle",
    "Timeouts",
]
