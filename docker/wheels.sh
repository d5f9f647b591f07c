#!/usr/bin/env bash
# Fill docker/wheels/ with the wheels an image target installs: modalfuse itself and exactly the
# packages of its lock (requirements/<set>.txt, made by `make lock`), each checked against the
# lock's hashes, fetched by this machine's pip (its index and certificates). The lock goes
# along (docker/wheels/requirements/) so the image installs from it with --require-hashes.
# Usage: docker/wheels.sh serve|ui|train|stack
#   stack: only the compose stack's MLflow server (requirements/mlflow-server.txt), into
#   docker/wheels/stack/ so the serve and train images never see them.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-serve}
PY=${PYTHON:-.venv/bin/python}
OUT=docker/wheels
case "$TARGET" in
    serve|ui|train) LOCK=requirements/$TARGET.txt; DEST=$OUT ;;
    stack) LOCK=requirements/mlflow-server.txt; DEST=$OUT/stack ;;
    *) echo "target must be serve, ui, train or stack, got '$TARGET'" >&2; exit 2 ;;
esac
[ -f "$LOCK" ] || { echo "no lock at $LOCK (run make lock)" >&2; exit 1; }
mkdir -p "$DEST/requirements"
cp "$LOCK" "$DEST/requirements/"
# The image's Python is bookworm's 3.11 on x86_64 glibc: fetch wheels for exactly that, and
# only the locked files (--require-hashes: a file whose hash is not in the lock is refused).
# A package published without any wheel (antlr4-python3-runtime, under dvc's hydra) comes as
# its locked sdist, which the image's pip builds offline with the locked setuptools.
"$PY" -m pip download --quiet --dest "$DEST" --prefer-binary --no-deps --require-hashes \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp -r "$LOCK"
if [ "$TARGET" != stack ]; then
    rm -f "$OUT"/modalfuse-*.whl
    # Built offline by the venv's locked setuptools, as `make install` builds it.
    "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" .
fi
echo "wheels for '$TARGET' in $DEST: $(find "$DEST" -maxdepth 1 \( -name '*.whl' -o -name '*.tar.gz' \) | wc -l) files, lock $LOCK"
# The images' WHEELS_DIGEST build argument: it changes whenever a file or a lock does.
(cd "$DEST" && find . -maxdepth 2 \( -name '*.whl' -o -name '*.tar.gz' -o -path './requirements/*.txt' \) \
    -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16) > "$DEST/.digest"
