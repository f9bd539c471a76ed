#!/usr/bin/env bash
# Set up and run the main demo: durable functions embedded in one process on SQLite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
