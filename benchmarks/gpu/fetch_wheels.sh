#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels that the GPU check carries to a GPU
# machine without one (benchmarks/gpu/wheels.txt, for its Python 3.12 on x86_64) into .whl/.
#   bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=${PIP:-.venv/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"
mkdir -p .whl
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r benchmarks/gpu/wheels.txt
ls -1 .whl
du -sh .whl
