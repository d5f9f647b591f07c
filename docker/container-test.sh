#!/usr/bin/env bash
# CI for the serve image: lint the Dockerfile, build a bookworm base with debootstrap, build
# the serve target with podman, run it with a model bundle, call /health and /v1/predict,
# check size, user and healthcheck, and remove everything it started.
# Usage: docker/container-test.sh [bundle-folder]   (default: the real-data smoke bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-.cache/smoke/models/pokemon/latest}
IMAGE=localhost/modalfuse:serve-test
TRAIN_IMAGE=localhost/modalfuse:train-test
BASE=localhost/modalfuse-base:bookworm
NAME=modalfuse-serve-test-$$
PORT=${PORT:-18000}
# The serve image is the API alone on a scratch root (docker/serve-rootfs.sh): it must stay
# within MAX_MB (300 MB).
MAX_MB=${MAX_MB:-300}
HADOLINT=${HADOLINT:-.venv/bin/hadolint}
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

[ -f "$BUNDLE/bundle.json" ] || { echo "no model bundle at $BUNDLE (run make smoke first)" >&2; exit 2; }

step "hadolint"
"$HADOLINT" --failure-threshold warning docker/Dockerfile

step "container tools"
# podman, buildah, runc and debootstrap, set up for a machine with no overlay or systemd.
. docker/podman-setup.sh

cleanup() {
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman rmi -f "$IMAGE" "$TRAIN_IMAGE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "base image (debootstrap, cached)"
docker/build-base.sh "$BASE"

step "wheels"
docker/wheels.sh serve

step "build serve image"
VERSION=$(.venv/bin/python -c "import modalfuse; print(modalfuse.__version__)")
podman build --format docker --target serve --build-arg BASE_IMAGE="$BASE" \
    --build-arg MODALFUSE_VERSION="$VERSION" --build-arg WHEELS_DIGEST="$(cat docker/wheels/.digest)" \
    -f docker/Dockerfile -t "$IMAGE" docker

size_mb=$(( $(podman image inspect "$IMAGE" --format '{{.Size}}') / 1000000 ))
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
health=$(podman image inspect "$IMAGE" --format '{{json .Config.Healthcheck}}')
echo "image size ${size_mb} MB (limit ${MAX_MB}), user '${user}', healthcheck ${health}"
[ "$size_mb" -le "$MAX_MB" ] || { echo "image is ${size_mb} MB, over ${MAX_MB} MB" >&2; exit 1; }
# What `modalfuse bench serve` reports as the image size.
mkdir -p .cache/container
printf '{"image": "modalfuse serve", "size_mb": %s, "measured_at": "%s", "commit": "%s"}\n' \
    "$size_mb" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    > .cache/container/serve-image.json
case "$user" in ""|0|0:*|root|root:*) echo "image runs as root ('${user}')" >&2; exit 1 ;; esac
[ "$health" != "null" ] || { echo "image has no HEALTHCHECK" >&2; exit 1; }
# Python and the API's libraries import; the training libraries, the UI and MLflow's client
# must not (LightGBM models are served from their ONNX files; a registry is read over REST).
podman run --rm --entrypoint /opt/venv/bin/python "$IMAGE" -c \
    "import onnxruntime, modalfuse.serve.app; print('imports ok, onnxruntime', onnxruntime.__version__)"
for lib in torch lightgbm scipy sklearn gradio mlflow pyarrow; do
    if podman run --rm --entrypoint /opt/venv/bin/python "$IMAGE" -c "import $lib" >/dev/null 2>&1; then
        echo "$lib is importable in the serve image" >&2; exit 1
    fi
done

step "run"
# No systemd here to time healthchecks: they are run by hand below instead. The image's own
# command (`modalfuse serve`), on another port, with two worker processes.
podman run -d --name "$NAME" --network host --health-interval disable \
    -e MODALFUSE_API_KEY=container-test-key-0123456789 \
    -e PORT="$PORT" \
    -v "$(realpath "$BUNDLE"):/models/latest:ro" \
    -e MODALFUSE_WORKERS=2 \
    "$IMAGE" /opt/venv/bin/modalfuse serve --host 127.0.0.1 --port "$PORT" >/dev/null
for _ in $(seq 1 60); do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
    sleep 1
done

step "call /health and /v1/predict"
.venv/bin/python - "$PORT" <<'PY'
import json, sys, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
health = json.load(urllib.request.urlopen(base + "/health", timeout=10))
assert health["status"] == "ok", health
schema = json.load(urllib.request.urlopen(base + "/openapi.json", timeout=10))
body = schema["components"]["schemas"]["PredictRequest"]["examples"][0]
req = urllib.request.Request(base + "/v1/predict", json.dumps(body).encode(),
                             {"Content-Type": "application/json", "X-Request-ID": "ci-1"})
with urllib.request.urlopen(req, timeout=30) as r:
    pred = json.load(r)
    assert r.headers["x-request-id"] == "ci-1"
assert pred["label"] and pred["model_version"] == health["model_version"], pred
print(f"health ok, model {health['model_version']}; predicted {pred['label']} "
      f"({pred['top'][0]['probability']:.2f})")
# Two worker processes: a reload reaches both before it answers.
req = urllib.request.Request(base + "/admin/reload", b"{}", {
    "Content-Type": "application/json", "X-API-Key": "container-test-key-0123456789"})
with urllib.request.urlopen(req, timeout=60) as r:
    workers = json.load(r)["workers"]
assert len(workers) == 2 and all(w["error"] is None for w in workers), workers
print(f"reload reached {len(workers)} workers: {[w['pid'] for w in workers]}")
PY
podman healthcheck run "$NAME"
echo "HEALTHCHECK passes"
podman logs "$NAME" 2>&1 | tail -n 3

step "build train image (its lock: torch's CPU build, LightGBM, MLflow)"
# The train target installs requirements/train.txt with --require-hashes, as the serve one
# does its own; built here so that every image's install path runs in CI.
docker/wheels.sh train
podman build --format docker --target train --build-arg BASE_IMAGE="$BASE" \
    --build-arg MODALFUSE_VERSION="$VERSION" --build-arg WHEELS_DIGEST="$(cat docker/wheels/.digest)" \
    -f docker/Dockerfile -t "$TRAIN_IMAGE" docker > .cache/container/build-train.log 2>&1 \
    || { tail -n 30 .cache/container/build-train.log; exit 1; }
podman run --rm --entrypoint /opt/venv/bin/python "$TRAIN_IMAGE" -c \
    "import lightgbm, mlflow, torch, modalfuse.training.train; \
assert torch.__version__.endswith('+cpu'), torch.__version__; \
print('train image: modalfuse', modalfuse.__version__, 'torch', torch.__version__)"
podman run --rm "$TRAIN_IMAGE" --help >/dev/null
echo "train image: $(( $(podman image inspect "$TRAIN_IMAGE" --format '{{.Size}}') / 1000000 )) MB"

step "done"
echo "container-test passed in ${SECONDS}s"
