"""Run by test_django_outbox.py in its own interpreter (Django is configured once per process):
a Django project whose database is stepwell's, a view-like block sending with
`send_in_transaction`, and a stepwell worker in the same process. Prints a JSON report."""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import urlparse

import django
from django.conf import settings

url = sys.argv[1]
if url.startswith("sqlite:"):
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": url.removeprefix("sqlite:///")}
else:
    parts = urlparse(url)
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": parts.path.lstrip("/"),
                "HOST": parts.hostname, "PORT": parts.port or 5432, "USER": parts.username,
                "PASSWORD": parts.password or ""}
settings.configure(SECRET_KEY="test", INSTALLED_APPS=["stepwell.integrations.django"],
                   DATABASES={"default": database}, USE_TZ=True,
                   STEPWELL={"APP": "__main__:functions", "DB": url, "WORKER": True})

import stepwell  # noqa: E402

functions = stepwell.App("outbox")


@functions.function(id="confirm", trigger="outbox/order.created")
def confirm(ctx: stepwell.Context, step: stepwell.SyncStep) -> int:
    return int(step.run("confirm", lambda: ctx.event.data["order_id"]))


django.setup()

from django.db import connection, transaction  # noqa: E402

from stepwell.integrations.django import engine, send_in_transaction  # noqa: E402
from stepwell.loop_thread import block_on  # noqa: E402

sw = engine().start()              # the worker (migrates stepwell's tables in this database)
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
report: dict[str, object] = {}
with transaction.atomic():
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO orders (id) VALUES (1)")
    sent = send_in_transaction("outbox/order.created", {"order_id": 1}, using="default")
    # Not committed yet: stepwell's own connection does not see the event.
    report["visible_before_commit"] = block_on(sw.engine.get_event(str(sent))) is not None
try:
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders (id) VALUES (2)")
        send_in_transaction({"name": "outbox/order.created", "id": "rolled-back",
                             "data": {"order_id": 2}})
        raise RuntimeError("the view fails: everything rolls back")
except RuntimeError:
    pass
deadline = time.monotonic() + 30
while not (runs := sw.runs(event_id=str(sent))) or runs[0].status != "completed":
    assert time.monotonic() < deadline, runs
    time.sleep(0.02)
report["output"] = runs[0].output
report["rolled_back_event"] = block_on(sw.engine.get_event("rolled-back")) is not None
with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM orders")
    report["orders"] = cursor.fetchone()[0]
sw.stop()
print(json.dumps(report))
