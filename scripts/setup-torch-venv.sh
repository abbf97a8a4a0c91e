#!/usr/bin/env bash
# Makes (once per machine) the virtual environment with the agent's PyTorch, at the version pinned
# in tests/torch-version (the one pin: every script and test reads it there), that the tests
# needing the real torch use: the native payloads unpickled by torch, the Python package's drop-in
# tests. Kept outside the clone (so that CI's fresh clone reuses it on the same machine):
# ${ETB_CACHE_DIR:-~/.cache/etha-tensor-bus}/torch-<version>. Prints its python.
#
# The first install downloads about 5 GB (torch and its CUDA libraries from PyPI) and takes
# several minutes; later runs only check it. No GPU is needed to use it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
torch_version=$(cat "$root/tests/torch-version")
cache=${ETB_CACHE_DIR:-$HOME/.cache/etha-tensor-bus}
venv=$cache/torch-$torch_version
want="torch==$torch_version numpy pytest==9.0.2 posix-ipc==1.3.2 lmdb==3.0.0 msgspec==0.22.0"
py=${PYTHON:-python3}
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv" >&2
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $want >&2
    echo "$want" > "$venv/.requirements"
fi
echo "$venv/bin/python"
