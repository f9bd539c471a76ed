"""Definition-time validation: bad options fail naming the function, option and what is allowed."""

from __future__ import annotations

from typing import Any

import pytest

import stepwell
from stepwell.core.config import build_spec


def define(**options: Any) -> stepwell.Function:
    app = stepwell.App("shop")
    options.setdefault("trigger", "shop/order.created")

    @app.function(id="f", **options)
    async def f(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    return f


@pytest.mark.parametrize(("options", "fragment"), [
    ({"trigger": None}, "'trigger' is missing"),
    ({"trigger": 42}, "'trigger' is 42; allowed: an event name"),
    ({"trigger": ""}, "non-empty event name"),
    ({"trigger": "a*b"}, "wildcard '*' may only end"),
    ({"trigger": stepwell.Cron("not a cron")}, "invalid cron schedule"),
    ({"trigger": stepwell.Cron("TZ=Mars/Olympus 0 * * * *")}, "Mars/Olympus"),
    ({"trigger": stepwell.Event("x", if_="event.data.x ==")}, "'trigger.if_'"),
    ({"retries": 21}, "'retries' is 21; allowed: 0..20"),
    ({"cancel_on": [stepwell.Cancel(event="x")] * 6}, "at most 5 are allowed"),
    ({"cancel_on": [{"event": "x", "match": "data.id", "timout": "1h"}]}, "unknown keys"),
    ({"cancel_on": [stepwell.Cancel(event="x", timeout="soon")]}, "'cancel_on.timeout'"),
    ({"timeouts": stepwell.Timeouts(finish="-5s")}, "'timeouts.finish'"),
    ({"timeouts": {"start": "1x"}}, "'timeouts.start' is invalid"),
    ({"concurrency": [1, 2, 3]}, "at most 2 are allowed"),
    ({"concurrency": 0}, "'concurrency.limit' is 0"),
    ({"throttle": {"limit": 5, "period": "500ms"}}, "'throttle.period' is 500ms; allowed: 1s..7d"),
    ({"throttle": {"limit": 5, "period": "8d"}}, "allowed: 1s..7d"),
    ({"rate_limit": {"limit": 10, "period": "1m", "key": "event.data.("}}, "'rate_limit.key'"),
    ({"batch": {"max_size": 10, "timeout": "5s"}, "idempotency": "event.data.id"},
     "'batch' cannot be combined with 'idempotency'"),
    ({"batch": {"max_size": 10, "timeout": "5s"}, "debounce": {"period": "5s"}},
     "cannot be combined with 'debounce'"),
    ({"singleton": {"mode": "replace"}}, "'singleton.mode' is 'replace'"),
    ({"priority": {"run": "event.data.plan === "}}, "'priority.run'"),
])
def test_invalid_options_name_function_option_and_allowed(options: dict[str, Any],
                                                          fragment: str) -> None:
    with pytest.raises(stepwell.ConfigError) as info:
        define(**options)
    message = str(info.value)
    assert "function 'f'" in message
    assert fragment in message


def test_duplicate_function_id_is_rejected() -> None:
    app = stepwell.App("shop")

    @app.function(id="f", trigger="x")
    async def first(ctx: stepwell.Context, step: stepwell.Step) -> None:
        return None

    with pytest.raises(stepwell.ConfigError, match="'f' is already defined in app 'shop'"):
        @app.function(id="f", trigger="y")
        async def second(ctx: stepwell.Context, step: stepwell.Step) -> None:
            return None

    assert app.functions["f"] is first


@pytest.mark.parametrize("fn_id", ["", "has space", "/slash", None])
def test_invalid_function_ids(fn_id: Any) -> None:
    with pytest.raises(stepwell.ConfigError, match="function id"):
        build_spec("a", fn_id, trigger="x")


def test_handler_must_take_ctx_and_step() -> None:
    app = stepwell.App("shop")
    with pytest.raises(stepwell.ConfigError, match=r"two arguments \(ctx, step\)"):
        @app.function(id="f", trigger="x")
        async def f(ctx: stepwell.Context) -> None:
            return None


def test_seed_style_dict_options_are_accepted() -> None:
    fn = define(rate_limit={"limit": 10, "period": "1m", "key": "event.data.userId"},
                throttle={"limit": 5, "period": "1s"},
                priority={"run": "event.data.plan === 'enterprise' ? 100 : 0"})
    assert fn.spec.rate_limit is not None and fn.spec.rate_limit.period_ms == 60_000
    assert fn.spec.throttle is not None and fn.spec.throttle.limit == 5
    assert fn.spec.priority is not None
    assert fn.spec.priority.evaluate({"data": {"plan": "enterprise"}}) == 100


def test_cron_and_event_triggers_together() -> None:
    fn = define(trigger=["shop/order.*", stepwell.Cron("TZ=Europe/Paris 0 12 * * 5"),
                         stepwell.Event("shop/vip", if_="event.data.total > 100")])
    assert len(fn.spec.triggers) == 3
