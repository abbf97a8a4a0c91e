#!/usr/bin/env bash
# Creates (or refreshes) .venv with the pinned packages of tests/requirements.txt.
# Idempotent and quiet when nothing changed; works on a fresh machine with python3.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    rm -rf .venv
    "$py" -m venv .venv 2>/dev/null || {
        # Debian/Ubuntu without python3-venv: fall back to virtualenv from PyPI.
        "$py" -m pip install --user -q virtualenv && "$py" -m virtualenv -q .venv
    }
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$want" > "$stamp"
fi
