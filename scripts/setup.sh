#!/usr/bin/env bash
# Everything the test suite (`bash .ci/run`) needs, installed only where missing or outdated:
# - .venv with stepwell and its pinned dev and docs dependencies (pytest, mypy, ruff, mkdocs...);
# - the npm packages of the official-SDK test apps (tests/inngest/ts_app, from the committed
#   lockfile): the compatibility tests run real TypeScript apps, so they need Node.js >= 20;
# - Debian's Chromium, which the `playwright` package drives in the dashboard's browser tests.
# The demo (scripts/demo.sh) needs none of this but Python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/venv.sh
UPGRADE_PIP=1 venv_install setup '.[dev,docs]'
if [ ! tests/inngest/ts_app/node_modules/.package-lock.json -nt tests/inngest/ts_app/package-lock.json ]; then
    command -v npm >/dev/null || {
        echo "setup: npm (Node.js >= 20) is needed for the official-SDK compatibility tests (tests/inngest/ts_app); install Node.js (Debian: apt-get install nodejs npm)" >&2; exit 1; }
    echo "setup: installing the npm packages of the TypeScript SDK test apps (npm ci, tests/inngest/ts_app)" >&2
    npm ci --prefix tests/inngest/ts_app --no-audit --no-fund --loglevel=error
fi
if [ ! -x /usr/bin/chromium ]; then
    command -v apt-get >/dev/null || {
        echo "setup: the dashboard's browser tests need Chromium at /usr/bin/chromium (Debian: apt-get install chromium)" >&2; exit 1; }
    echo "setup: installing Debian's chromium for the dashboard's browser tests (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
fi
