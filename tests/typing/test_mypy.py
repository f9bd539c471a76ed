"""mypy on typed user code: examples/typed_app.py passes `--strict` with its `assert_type`s
(which fail on Any), and misuse of a typed step result, event data or step arguments is an
error mypy reports, so nothing a user touches is silently `Any`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MISUSE = '''
from __future__ import annotations

import stepwell
from typed_app import OrderCreated, get_user, make_invoice, payment_succeeded


async def handler(ctx: stepwell.Context[OrderCreated], step: stepwell.Step) -> None:
    user = await step.run("u", get_user, 1)
    user.no_such_field
    ctx.event.data.no_such_data
    await step.run("i", make_invoice, "one", 1.0, "e")
    paid = await step.wait_for_event("w", event=payment_succeeded, timeout="1h")
    if paid is not None:
        paid.data.no_such_amount
'''


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_typed_example_passes_mypy_strict() -> None:
    done = mypy("examples/typed_app.py", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_misusing_typed_results_is_a_mypy_error(tmp_path: Path) -> None:
    (tmp_path / "misuse.py").write_text(MISUSE)
    (tmp_path / "typed_app.py").write_text((ROOT / "examples" / "typed_app.py").read_text())
    done = mypy("misuse.py", cwd=tmp_path)
    out = done.stdout
    assert '"User" has no attribute "no_such_field"' in out, out
    assert '"OrderCreated" has no attribute "no_such_data"' in out, out
    assert 'misuse.py:12: error: No overload variant of "run" of "Step" matches' in out, out
    assert '"PaymentSucceeded" has no attribute "no_such_amount"' in out, out
