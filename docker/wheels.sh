#!/usr/bin/env bash
# Fill docker/wheels/ with the wheels an image target installs: modalfuse itself and its
# pinned dependencies, fetched by this machine's pip (its index and certificates).
# Usage: docker/wheels.sh serve|train
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-serve}
PY=${PYTHON:-.venv/bin/python}
OUT=docker/wheels
case "$TARGET" in
    serve) EXTRAS=serve ;;
    train) EXTRAS=serve,train,monitor ;;
    *) echo "target must be serve or train, got '$TARGET'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
rm -f "$OUT"/modalfuse-*.whl
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" .
# The image's Python is bookworm's 3.11 on x86_64 glibc: fetch wheels for exactly that.
"$PY" -m pip download --quiet --dest "$OUT" --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp \
    --find-links "$OUT" "modalfuse[$EXTRAS]"
echo "wheels for '$TARGET' in $OUT: $(ls "$OUT" | wc -l) files"
