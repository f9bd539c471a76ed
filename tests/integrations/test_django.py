"""examples/django_app end to end: Django's test client calls a real view that saves an order
and sends its event with `send_on_commit`; a real `manage.py stepwell worker` process runs the
function (which updates the order through the ORM); a rolled-back view sends nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.integrations.servers import EXAMPLES

PROJECT = EXAMPLES / "django_app"
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("django")
    env = {"DJANGO_DB": str(tmp / "django.sqlite3"),
           "STEPWELL_DB": f"sqlite:///{tmp / 'stepwell.db'}",
           "DJANGO_SETTINGS_MODULE": "shopsite.settings"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    worker = subprocess.Popen([sys.executable, "manage.py", "stepwell", "worker"], cwd=PROJECT,
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert worker.stdout is not None
        banner = worker.stdout.readline()
        assert "stepwell worker running" in banner, banner + worker.stdout.read()
        yield env
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
        from stepwell.integrations.django import engine

        engine().stop()
        sys.path.remove(str(PROJECT))
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert worker.returncode == 0, out
    assert "stepwell worker stopped" in out


def runs_of(client: Any, event_id: str) -> list[dict[str, Any]]:
    return list(json.loads(client.get(f"/orders/{event_id}").content)["runs"])


def test_a_view_sends_on_commit_and_the_worker_runs_it(django_project: dict[str, str]) -> None:
    from django.test import Client
    from orders.models import Order

    client = Client()
    reply = client.post("/orders", json.dumps({"total": "12.50"}),
                        content_type="application/json")
    assert reply.status_code == 200, reply.content
    sent = json.loads(reply.content)
    deadline = time.monotonic() + DEADLINE_S
    while not (runs := runs_of(client, sent["event_id"])) or runs[0]["status"] != "completed":
        assert time.monotonic() < deadline, runs
        time.sleep(0.05)
    assert runs[0]["output"] == {"order_id": sent["order_id"], "status": "confirmed"}
    assert Order.objects.get(id=sent["order_id"]).status == "confirmed"


def test_a_rolled_back_view_sends_nothing(django_project: dict[str, str]) -> None:
    from django.test import Client
    from orders.models import Order

    from stepwell.integrations.django import engine
    from stepwell.loop_thread import block_on

    client = Client(raise_request_exception=False)
    before = Order.objects.count()
    reply = client.post("/orders", json.dumps({"total": "1.00", "fail": True}),
                        content_type="application/json")
    assert reply.status_code == 500
    assert Order.objects.count() == before           # the order was rolled back ...
    events = block_on(engine().engine.events())
    ids = {event.id for event, _ in events}
    assert f"order-{before + 1}" not in ids          # ... and its event never sent
    assert all(e.name == "orders/order.created" for e, _ in events)


def test_send_on_commit_checks_the_event_in_the_view(django_project: dict[str, str]) -> None:
    import stepwell
    from stepwell.integrations.django import send_on_commit

    with pytest.raises(stepwell.InvalidEventError, match="data"):
        send_on_commit("orders/order.created", [1])


def test_manage_py_stepwell_dev_serves_the_api(django_project: dict[str, str]) -> None:
    import httpx

    server = subprocess.Popen([sys.executable, "manage.py", "stepwell", "dev", "--port", "0"],
                              cwd=PROJECT, env={**os.environ, **django_project},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "stepwell server running at http://" in first, first + server.stdout.read()
        url = first.split("running at ", 1)[1].split()[0]
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 200
        functions = httpx.get(f"{url}/v1/functions", timeout=10).json()["data"]
        assert "orders/confirm-order" in json.dumps(functions), functions
    finally:
        server.terminate()
        server.communicate(timeout=30)
