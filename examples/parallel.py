"""Parallel steps: the seed's "Parallelism" pattern (`Promise.all` is `asyncio.gather`).

Both fetches start at once; each is its own step, checkpointed (and retried) on its own. On a
replay neither runs again: both results come from the run's memo.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import stepwell

app = stepwell.App("accounts")


# --- fake services -----------------------------------------------------------------------------


@dataclass
class FakeServices:
    """Stand-ins for the user database and Stripe, with a little latency."""

    users: dict[int, dict[str, Any]] = field(default_factory=lambda: {
        7: {"id": 7, "name": "Ada Lovelace", "stripeCustomer": "cus_ada"},
        8: {"id": 8, "name": "Grace Hopper", "stripeCustomer": "cus_grace"},
    })
    subscriptions: dict[int, dict[str, Any]] = field(default_factory=lambda: {
        7: {"id": "sub_1", "plan": "enterprise", "status": "active"},
        8: {"id": "sub_2", "plan": "pro", "status": "past_due"},
    })
    in_flight: int = 0
    peak_in_flight: int = 0

    async def _call(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)        # network latency
        finally:
            self.in_flight -= 1

    async def find_user(self, user_id: int) -> dict[str, Any]:
        await self._call()
        return self.users[user_id]

    async def retrieve_subscription(self, user_id: int) -> dict[str, Any]:
        await self._call()
        return self.subscriptions[user_id]


services = FakeServices()


# --- the function ------------------------------------------------------------------------------


@app.function(id="load-account", trigger="accounts/account.requested")
async def load_account(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    user_id: int = ctx.event.data["userId"]
    user, subscription = await asyncio.gather(
        step.run("fetch-user", services.find_user, user_id),
        step.run("fetch-sub", services.retrieve_subscription, user_id),
    )
    return {"name": user["name"], "plan": subscription["plan"],
            "active": subscription["status"] == "active"}
