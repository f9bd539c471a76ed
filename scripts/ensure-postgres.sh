#!/usr/bin/env bash
# Make sure the Postgres the tests use (127.0.0.1:5432, trust auth, user postgres) is running:
# start the local cluster if it is down, then wait until it accepts connections.
# STEPWELL_TEST_DB=sqlite skips it (SQLite-only test runs need no server).
set -euo pipefail
if [ "${STEPWELL_TEST_DB:-both}" = "sqlite" ]; then
    exit 0
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "== starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        exit 0
    fi
    sleep 0.5
done
echo "Postgres at 127.0.0.1:5432 did not come up" >&2
exit 1
