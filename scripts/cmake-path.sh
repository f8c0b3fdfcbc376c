#!/usr/bin/env bash
# Prints a CMake to build llama.cpp's tools with: the machine's own, or one installed from PyPI
# into the venv at $1 (made if missing) where the machine has none.
#
#   cmake="$(scripts/cmake-path.sh target/perf/venv)"
set -euo pipefail
if command -v cmake > /dev/null; then
    command -v cmake
    exit 0
fi
venv="$1"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
[ -x "$venv/bin/cmake" ] || "$venv/bin/pip" install -q cmake >&2
echo "$venv/bin/cmake"
