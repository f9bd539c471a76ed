"""A money transfer with retries, a non-retriable error and a failure handler (rollback).

The seed's "Error Handling" section in one function:
- automatic retries: "credit-destination" talks to a flaky bank API; a timeout is retried with
  backoff (15s, 30s, 1m, 2m... plus jitter), up to `retries` times;
- `NonRetriableError`: an invalid payload fails the run at once: retrying cannot fix it;
- `on_failure`: once the run has failed for good, a separate durable run ("risky-transfer-failure")
  reverses the debit ("rollback-funds") and alerts an admin with the error ("notify-admin").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import stepwell

app = stepwell.App("bank")


# --- a fake bank -------------------------------------------------------------------------------


@dataclass
class FakeBank:
    balances: dict[str, int] = field(default_factory=lambda: {"alice": 500, "bob": 100})
    debits: dict[str, tuple[str, int]] = field(default_factory=dict)   # transferId -> (acct, amt)
    credits: dict[str, tuple[str, int]] = field(default_factory=dict)
    outages: int = 0          # how many upcoming credit calls time out (a flaky upstream)
    credit_calls: int = 0
    alerts: list[str] = field(default_factory=list)

    def debit(self, transfer_id: str, account: str, amount: int) -> dict[str, Any]:
        if transfer_id not in self.debits:             # idempotent per transfer
            self.balances[account] -= amount
            self.debits[transfer_id] = (account, amount)
        return {"account": account, "balance": self.balances[account]}

    def credit(self, transfer_id: str, account: str, amount: int) -> dict[str, Any]:
        self.credit_calls += 1
        if self.outages > 0:
            self.outages -= 1
            raise ConnectionError("bank API timed out")
        if transfer_id not in self.credits:
            self.balances[account] += amount
            self.credits[transfer_id] = (account, amount)
        return {"account": account, "balance": self.balances[account]}

    def reverse_transfer(self, transfer_id: str) -> dict[str, Any]:
        debit = self.debits.pop(transfer_id, None)
        if debit is None:
            return {"transferId": transfer_id, "reversed": 0}
        account, amount = debit
        self.balances[account] += amount
        return {"transferId": transfer_id, "reversed": amount, "account": account}

    def send_alert(self, text: str) -> str:
        self.alerts.append(text)
        return text


bank = FakeBank()


def validate(data: dict[str, Any]) -> dict[str, Any]:
    """Check the payload; a bad one can never succeed, so don't retry it."""
    problems = []
    for key in ("transferId", "from", "to"):
        if not isinstance(data.get(key), str):
            problems.append(f"'{key}' is missing")
    amount = data.get("amount")
    if not isinstance(amount, int) or amount <= 0:
        problems.append(f"amount must be a positive integer, got {amount!r}")
    for key in ("from", "to"):
        if isinstance(data.get(key), str) and data[key] not in bank.balances:
            problems.append(f"unknown account {data[key]!r}")
    if problems:
        raise stepwell.NonRetriableError("Invalid payload: " + "; ".join(problems))
    return {"transferId": data["transferId"], "from": data["from"], "to": data["to"],
            "amount": amount}


# --- the failure handler -----------------------------------------------------------------------


async def rollback(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    """Runs after the transfer has failed for good. `ctx.event` is the original
    bank/transfer.init event; `ctx.error` is why the run failed."""
    transfer_id = str(ctx.event.data.get("transferId"))
    message = ctx.error.message if ctx.error is not None else "unknown error"
    reversed_ = await step.run("rollback-funds", bank.reverse_transfer, transfer_id)
    await step.run("notify-admin", bank.send_alert, f"Transfer failed: {message}")
    return {"transferId": transfer_id, "rolledBack": reversed_["reversed"]}


# --- the function ------------------------------------------------------------------------------


@app.function(id="risky-transfer", trigger="bank/transfer.init", retries=4,
              on_failure=rollback)
async def risky_transfer(ctx: stepwell.Context, step: stepwell.Step) -> dict[str, Any]:
    transfer = await step.run("validate", validate, ctx.event.data)
    await step.run("debit-source", bank.debit,
                   transfer["transferId"], transfer["from"], transfer["amount"])
    credited = await step.run("credit-destination", bank.credit,
                              transfer["transferId"], transfer["to"], transfer["amount"])
    return {"transferId": transfer["transferId"], "status": "done",
            "toBalance": credited["balance"]}
