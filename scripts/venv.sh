#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/setup.sh: `venv_install WHO SPEC` creates .venv (if
# needed) with $PYTHON (default python3, which must be >= 3.11) and installs stepwell into it in
# editable mode as SPEC ('.' for the runtime dependencies only, '.[dev,docs]' for everything the
# tests need). A stamp file skips the install when pyproject.toml has not changed since the last
# install of the same SPEC (or of everything), so a second run starts at once.
venv_install() {
    local who=$1 spec=$2
    local python=${PYTHON:-python3}
    local stamp=".venv/.stepwell-installed${spec#.}" full=".venv/.stepwell-installed[dev,docs]"
    if [ ! -x .venv/bin/python ]; then
        command -v "$python" >/dev/null || { echo "$who: $python not found (stepwell needs Python >= 3.11)" >&2; exit 1; }
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "$who: stepwell needs Python >= 3.11; $python is $("$python" -V 2>&1) (set PYTHON=python3.11 or newer)" >&2; exit 1; }
        echo "$who: creating .venv with $("$python" -V 2>&1)" >&2
        "$python" -m venv .venv
    fi
    if [ "$stamp" -nt pyproject.toml ] || { [ "$spec" = . ] && [ "$full" -nt pyproject.toml ]; }; then
        return 0        # already installed (the full install includes the runtime one)
    fi
    echo "$who: installing stepwell ($spec) and its pinned dependencies into .venv (pip)" >&2
    if [ "${UPGRADE_PIP:-0}" = 1 ]; then    # the tests drive pip itself (tests/packaging)
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    touch "$stamp"
}
