"""`send_in_transaction` on both backends: the event commits and rolls back with the view's
writes (Django's own connection, stepwell's tables in the same database), a worker routes it
after the commit, and nothing of a rolled-back transaction is stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("django_outbox_script.py")


def test_events_commit_and_roll_back_with_the_view(db_url: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), db_url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"visible_before_commit": False, "output": 1,
                      "rolled_back_event": False, "orders": 1}
