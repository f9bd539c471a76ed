"""Django: events from sync views, tied to the view's transaction; `manage.py stepwell worker`.

    # settings.py
    INSTALLED_APPS = [..., "stepwell.integrations.django"]
    STEPWELL = {
        "APP": "orders.functions:functions",   # the stepwell.App (or a list of them)
        "DB": "postgresql://...",              # stepwell's database (default: SQLite file)
        "WORKER": False,                       # web processes only send; run `manage.py
    }                                          # stepwell worker` beside them

    # views.py
    from stepwell.integrations.django import send_on_commit

    def create_order(request):
        with transaction.atomic():
            order = Order.objects.create(...)
            send_on_commit("shop/order.created", {"order_id": order.id})

`send_on_commit` sends when the transaction commits (`transaction.on_commit`) and never if it
rolls back: no run ever sees an order that was not saved. The guarantee is "after commit, at
most once": the event is stored by stepwell's database in its own transaction right after the
commit, so a process killed between the two loses the event. When stepwell's database is the
project's database, `send_in_transaction` stores the event in the view's transaction itself:
committed or rolled back with the view's writes, never lost (see docs/guides/django.md).
`send` sends now, outside any transaction.
"""

from __future__ import annotations

from typing import Any

from stepwell.integrations.django.outbox import send_in_transaction
from stepwell.integrations.django.setup import engine

__all__ = ["engine", "send", "send_in_transaction", "send_on_commit"]


def send(*args: Any) -> str | list[str]:
    """Send events now (as `Engine.send`); returns the id(s)."""
    return engine().send(*args)


def send_on_commit(*args: Any, using: str | None = None) -> None:
    """Send events once the current transaction of database `using` commits (at once when no
    transaction is open, as Django's `on_commit` does); nothing is sent if it rolls back.
    The arguments are checked now, so a bad event fails in the view, not after the commit."""
    from django.db import transaction

    from stepwell.core.models import normalize_send

    normalize_send(args)
    transaction.on_commit(lambda: engine().send(*args), using=using)
