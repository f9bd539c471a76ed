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
# npm packages for the official-SDK tests (lockfile committed), installed only when it changed.
command -v npm >/dev/null || { echo "setup: npm (Node.js >= 20) is needed for tests/inngest" >&2; exit 1; }
if [ ! tests/inngest/ts_app/node_modules/.package-lock.json -nt tests/inngest/ts_app/package-lock.json ]; then
    npm ci --prefix tests/inngest/ts_app --no-audit --no-fund --loglevel=error
fi
# Debian's Chromium for the dashboard's browser tests (the `playwright` package drives it; its
# own browser download is not used), installed only when it is missing.
if [ ! -x /usr/bin/chromium ]; then
    command -v apt-get >/dev/null || { echo "setup: the dashboard tests need Chromium at /usr/bin/chromium (Debian: apt-get install chromium)" >&2; exit 1; }
    echo "setup: installing Debian's chromium for the dashboard tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
fi
