#!/usr/bin/env bash
# Creates (or refreshes) .venv with the pinned packages of tests/requirements.txt.
# Idempotent and quiet when nothing changed. Needs python3 >= 3.10 with its venv module
# (Debian/Ubuntu: apt-get install python3-venv; .ci/run does that on a bare machine).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "setup-venv: $("$py" --version 2>&1) is too old: the pinned test packages need Python >= 3.10" >&2
    exit 1
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    if ! "$py" -m venv .venv; then
        rm -rf .venv
        echo "setup-venv: '$py -m venv' failed; install the venv module (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
fi
