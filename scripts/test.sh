#!/usr/bin/env bash
# Runs every test suite of etha-tensor-bus and ends with one line "N passed, N failed, N skipped".
# Needs only the Rust toolchain, python3 and a C/C++ compiler; installs the pinned Python
# packages into .venv. Extra arguments go to tests/run_all.py (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
exec .venv/bin/python tests/run_all.py "$@"
