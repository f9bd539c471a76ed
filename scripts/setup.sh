#!/usr/bin/env bash
# Create .venv (if needed) and install stepwell with its pinned dev dependencies.
# Sourced by scripts/demo.sh and .ci/run so a fresh machine needs nothing but python3 >= 3.11.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
