#!/usr/bin/env bash
# The README's first command: set up .venv with stepwell and its runtime dependencies only (no
# Node.js, npm or Chromium: those are for the tests, installed by scripts/setup.sh), then run the
# demo: durable functions embedded in one process on SQLite (examples/demo.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
venv_install demo .
echo "demo: running examples/demo.py" >&2
exec .venv/bin/python examples/demo.py "$@"
