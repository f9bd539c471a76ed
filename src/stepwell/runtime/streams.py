"""Durable streams in the runtime: publishing from a run (`RunSession.publish`) and waking
this process's subscribers (`StreamHub`). Items published by other processes reach a
subscriber through its poll (`POLL_SECONDS`); see core/streams.py for the model."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from stepwell.core.serialize import to_json_value
from stepwell.core.streams import MAX_ITEM_BYTES, RETRACTED_TOPIC, run_channel
from stepwell.sdk.context import current_attempt, current_step
from stepwell.sdk.errors import InvalidStepError
from stepwell.store.base import StreamItem, Tx
from stepwell.store.codec import dumps

if TYPE_CHECKING:
    from stepwell.runtime.driver import RunDriver
    from stepwell.runtime.scripts import Effects, Placement

POLL_SECONDS = 0.25      # a subscriber re-reads this often when nothing woke it


class StreamHub:
    """One asyncio.Event per channel with subscribers here: a publish committed in this
    process sets it. A subscriber takes the event *before* it reads, so an item committed
    between its read and its wait still wakes it."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def listen(self, channel: str) -> asyncio.Event:
        event = self._events.get(channel)
        if event is None:
            event = self._events[channel] = asyncio.Event()
        return event

    def notify(self, channels: set[str] | list[str]) -> None:
        for channel in channels:
            event = self._events.pop(channel, None)
            if event is not None:
                event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float = POLL_SECONDS) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class Publisher:
    """What one execution of a run publishes (`step.publish`), and the retraction markers
    owed for attempts that failed or died (core/streams.py has the rules).

    - In the handler (outside steps) each publish is keyed by the run and its position among
      the handler's publishes, so replaying the handler appends nothing new.
    - Inside a step body it is live: appended at once, tagged with the step and attempt. The
      first publish of an attempt in this execution first retracts what an earlier, dead
      execution of the same attempt published; an attempt that fails is retracted by `retract`.
    Every publish holds the run's lease, so an execution that lost its run publishes nothing.
    """

    def __init__(self, driver: RunDriver) -> None:
        self._driver = driver
        self._handler_count = 0
        self._attempts: dict[tuple[str, int], set[str]] = {}   # (step, attempt) -> channels

    async def publish(self, topic: str, data: Any, channel: str | None) -> int:
        driver = self._driver
        run_id = driver.run_id
        channel = run_channel(run_id) if channel is None else channel   # names checked by Step
        value = to_json_value(data, what=f"the data published to topic '{topic}'")
        size = len(dumps(value).encode())
        if size > MAX_ITEM_BYTES:
            raise InvalidStepError(f"the data published to topic '{topic}' is {size} bytes; "
                                   f"a stream item holds at most {MAX_ITEM_BYTES}")
        step_id, attempt = current_step.get(), current_attempt.get()
        key, stale = None, False
        if step_id is None:
            key = f"{run_id}:{self._handler_count}"
            self._handler_count += 1
        else:
            attempt = attempt or 0
            channels = self._attempts.get((step_id, attempt))
            stale = channels is None
            if channels is None:
                channels = self._attempts[(step_id, attempt)] = set()
            channels.add(channel)
        item = StreamItem(channel, 0, topic, value, run_id, step_id, attempt, driver.now())

        def script(tx: Tx, place: Placement, effects: Effects) -> tuple[int, list[str]]:
            retracted: list[str] = []
            if stale and step_id is not None and attempt is not None:
                retracted = tx.attempt_channels(run_id, step_id, attempt)
                for stale_channel in retracted:
                    tx.publish_item(_marker(stale_channel, item), None)
            return tx.publish_item(item, key), retracted

        offset, retracted = await driver.write(script)
        driver.host.streams.notify({channel, *retracted})
        return offset

    async def retract(self, step_id: str, attempt: int) -> None:
        """Attempt `attempt` of `step_id` failed: mark what it published as retracted."""
        channels = self._attempts.pop((step_id, attempt), None)
        if not channels:
            return
        driver = self._driver
        base = StreamItem("", 0, RETRACTED_TOPIC, None, driver.run_id, step_id, attempt,
                          driver.now())

        def script(tx: Tx, place: Placement, effects: Effects) -> None:
            for channel in sorted(channels):
                tx.publish_item(_marker(channel, base), None)

        await driver.write(script)
        driver.host.streams.notify(channels)


def _marker(channel: str, of: StreamItem) -> StreamItem:
    """The retraction marker of `of`'s run, step and attempt, on `channel`."""
    return StreamItem(channel, 0, RETRACTED_TOPIC,
                      {"run_id": of.run_id, "step": of.step_id, "attempt": of.attempt},
                      of.run_id, None, None, of.created_at)


def item_view(item: StreamItem) -> dict[str, Any]:
    """An item as subscribers get it (SSE `data:`, `Client.subscribe`, `Engine.stream_items`)."""
    return {"offset": item.offset, "channel": item.channel, "topic": item.topic,
            "data": item.data, "run_id": item.run_id, "step": item.step_id,
            "attempt": item.attempt, "created_at": item.created_at}
