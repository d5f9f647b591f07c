#!/usr/bin/env bash
# Fill docker/wheels/ with the wheels an image target installs: modalfuse itself and its
# pinned dependencies, fetched by this machine's pip (its index and certificates).
# Usage: docker/wheels.sh serve|ui|train|stack
#   stack: only the compose stack's MLflow server (mlflow and psycopg2-binary at the train
#   extra's pins), into docker/wheels/stack/ so the serve and train images never see them.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-serve}
PY=${PYTHON:-.venv/bin/python}
OUT=docker/wheels
case "$TARGET" in
    serve) EXTRAS=serve ;;
    ui) EXTRAS=serve,ui ;;
    train) EXTRAS=serve,train,monitor ;;
    stack) ;;
    *) echo "target must be serve, train or stack, got '$TARGET'" >&2; exit 2 ;;
esac
if [ "$TARGET" = stack ]; then
    mapfile -t PINS < <("$PY" - <<'PY'
import tomllib

train = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["train"]
for req in train:
    if req.split("==")[0] in ("mlflow", "psycopg2-binary"):
        print(req)
PY
)
    [ ${#PINS[@]} -eq 2 ] || { echo "mlflow and psycopg2-binary pins not found in the train extra" >&2; exit 1; }
    mkdir -p "$OUT/stack"
    # Same platform as below: bookworm's Python 3.11 on x86_64 glibc.
    "$PY" -m pip download --quiet --dest "$OUT/stack" --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp "${PINS[@]}"
    echo "wheels for 'stack' (${PINS[*]}) in $OUT/stack: $(ls "$OUT/stack" | wc -l) files"
    exit 0
fi
mkdir -p "$OUT"
rm -f "$OUT"/modalfuse-*.whl
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" .
# The image's Python is bookworm's 3.11 on x86_64 glibc: fetch wheels for exactly that.
"$PY" -m pip download --quiet --dest "$OUT" --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp \
    --find-links "$OUT" "modalfuse[$EXTRAS]"
echo "wheels for '$TARGET' in $OUT: $(ls "$OUT" | wc -l) files"
# The images' WHEELS_DIGEST build argument: it changes whenever a wheel does.
(cd "$OUT" && sha256sum -- *.whl | sha256sum | cut -c1-16) > "$OUT/.digest"
