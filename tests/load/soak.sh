#!/usr/bin/env bash
# The soak (not in CI): the load test's queue run with 1,000,000 commands from 8 producers.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/setup-venv.sh
scripts/build.sh >/dev/null
ETB_LOAD_COMMANDS=${1:-1000000} .venv/bin/python -m pytest -q -s -p no:cacheprovider \
    tests/python/test_load.py -k 100k
