#!/usr/bin/env bash
# CI for the compose stack (compose.yaml, docs/compose.md): build every image with podman,
# bring PostgreSQL and MLflow up, train a quick model on the host and register it into that
# MLflow, then bring up the API and the UI serving models:/pokemon@champion from it and
# Prometheus scraping them; call them, check what Prometheus scraped, and remove every
# container, volume and network it started, on success or failure (the images stay).
# Usage: docker/compose-test.sh   (needs the smoke dataset: make smoke)
#   COMPOSE_TEST_KEEP=1 leaves the stack up to look at (and prints how to remove it).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=${SMOKE_DIR:-.cache/smoke}
WORK=.cache/compose-test
PY=.venv/bin/python
PROJECT=${COMPOSE_PROJECT:-modalfuse-compose-test}
COMPOSE=(.venv/bin/podman-compose -p "$PROJECT" -f compose.yaml)
HADOLINT=${HADOLINT:-.venv/bin/hadolint}
# Host ports of this run (not the defaults, so a stack a developer runs is left alone).
export API_PORT=${API_PORT:-18100} UI_PORT=${UI_PORT:-18101} \
    MLFLOW_PORT=${MLFLOW_PORT:-18500} PROMETHEUS_PORT=${PROMETHEUS_PORT:-18909}
# Secrets of this run only.
MODALFUSE_API_KEY=compose-test-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
MLFLOW_DB_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
export MODALFUSE_API_KEY MLFLOW_DB_PASSWORD
export MODALFUSE_MODEL_URI=models:/pokemon@champion
# HEALTHCHECK is kept only in the docker image format.
export BUILDAH_FORMAT=docker
MODALFUSE_VERSION=$("$PY" -c "import modalfuse; print(modalfuse.__version__)")
export BASE_IMAGE=localhost/modalfuse-base:bookworm MODALFUSE_VERSION
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

[ -f "$SMOKE/datasets/pokemon/manifest.json" ] || {
    echo "no smoke dataset in $SMOKE/datasets/pokemon (run make smoke first)" >&2; exit 2; }

mkdir -p "$WORK"

step "hadolint"
"$HADOLINT" --failure-threshold warning docker/stack.Dockerfile docker/Dockerfile

step "container tools"
. docker/podman-setup.sh

container() {  # the container of a compose service
    podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$1" | head -n1
}
teardown() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "compose-test failed (exit $rc); the services' last log lines:" >&2
        for svc in postgres mlflow api ui prometheus; do
            id=$(container "$svc")
            [ -n "$id" ] && { echo "--- $svc" >&2; podman logs --tail 15 "$id" 2>&1 | grep -v systemd >&2; }
        done
    fi
    if [ -n "${COMPOSE_TEST_KEEP:-}" ]; then
        echo "COMPOSE_TEST_KEEP is set: the stack stays up (API key $MODALFUSE_API_KEY);" \
             "remove it with MODALFUSE_API_KEY=x MLFLOW_DB_PASSWORD=x ${COMPOSE[*]} down -v"
        exit "$rc"
    fi
    step "down (containers, volumes, network)"
    "${COMPOSE[@]}" down -v >/dev/null 2>&1 || true
    rm -rf "$WORK/bundle"  # the build logs stay for a look
    exit "$rc"
}
trap teardown EXIT
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 2 s
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $(( limit / 2 ))); do
        if "$@" >/dev/null 2>&1; then echo "$what: ready (${SECONDS}s)"; return 0; fi
        sleep 2
    done
    echo "$what: not ready after ${limit}s" >&2
    return 1
}
healthy() { podman healthcheck run "$(container "$1")"; }  # no systemd here to time them
http_ok() { curl -fsS -o /dev/null "$1"; }

step "base image (debootstrap, cached)"
docker/build-base.sh "$BASE_IMAGE"

step "wheels"
docker/wheels.sh serve
docker/wheels.sh ui
docker/wheels.sh stack

step "build images (compose.yaml's build sections)"
"${COMPOSE[@]}" down -v >/dev/null 2>&1 || true  # a run killed before its teardown
# Fresh builds, without podman's layer cache: that cache does not see the bind-mounted
# wheels (a cached install would serve old code), and on vfs storage, where every layer is
# a full copy, building without layers is faster than a cached layered build. One image at
# a time; the image a tag named before is removed once nothing names it.
declare -A IMAGE=([postgres]=localhost/modalfuse-postgres:15 [prometheus]=localhost/modalfuse-prometheus:2.42
                  [mlflow]=localhost/modalfuse-mlflow:3.17.2 [api]=localhost/modalfuse:serve
                  [ui]=localhost/modalfuse:ui)
for svc in postgres prometheus mlflow api ui; do
    image=${IMAGE[$svc]}
    old=$(podman image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)
    BUILDAH_LAYERS=false "${COMPOSE[@]}" build --no-cache "$svc" > "$WORK/build-$svc.log" 2>&1 \
        || { tail -n 30 "$WORK/build-$svc.log"; exit 1; }
    new=$(podman image inspect "$image" --format '{{.Id}}')
    [ -z "$old" ] || [ "$old" = "$new" ] || podman rmi "$old" >/dev/null 2>&1 || true
    echo "$svc: $image, $(( $(podman image inspect "$image" --format '{{.Size}}') / 1000000 )) MB (${SECONDS}s)"
done

step "up: postgres, mlflow"
"${COMPOSE[@]}" up -d --no-build postgres >/dev/null
wait_for 120 postgres healthy postgres
"${COMPOSE[@]}" up -d --no-build mlflow >/dev/null
wait_for 180 mlflow http_ok "http://127.0.0.1:$MLFLOW_PORT/health"

step "train on the host and register into that MLflow"
MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" MODALFUSE_DATA_DIR="$SMOKE" \
    .venv/bin/modalfuse train --model gbm --rounds 20 --no-cv --out "$WORK/bundle" \
    | tee "$WORK/train.log" | tail -n 4
grep -q "registered .*as champion" "$WORK/train.log" \
    || { echo "the trained model did not become the registry's champion" >&2; exit 1; }
# The registry lives in PostgreSQL: the model is a row there.
podman exec "$(container postgres)" psql -U mlflow -d mlflow -tAc \
    "select name || ' v' || version from model_versions" | grep -x "pokemon v1"

step "up: api, ui, prometheus"
"${COMPOSE[@]}" up -d --no-build api ui prometheus >/dev/null
wait_for 180 api http_ok "http://127.0.0.1:$API_PORT/health"
wait_for 240 ui http_ok "http://127.0.0.1:$UI_PORT/health"
wait_for 60 prometheus http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
healthy api && healthy ui && echo "api and ui HEALTHCHECKs pass"

step "call the API and the UI"
"$PY" - <<'PY'
import json, os, urllib.request

api, ui = (f"http://127.0.0.1:{os.environ[k]}" for k in ("API_PORT", "UI_PORT"))
key = {"X-API-Key": os.environ["MODALFUSE_API_KEY"]}

def get(url):
    return json.load(urllib.request.urlopen(url, timeout=30))

def post(url, body, headers=None):
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **(headers or {})})
    return json.load(urllib.request.urlopen(req, timeout=60))

for base in (api, ui):
    model = get(base + "/v1/model")
    src = model["source"]
    assert src["source"] == "registry" and src["uri"] == "models:/pokemon@champion", src
    assert src["name"] == "pokemon" and src["version"] == "1", src
    print(f"{base}: serves {src['uri']} (version {src['version']}, model {model['model_version']})")
body = get(api + "/openapi.json")["components"]["schemas"]["PredictRequest"]["examples"][0]
for _ in range(3):
    pred = post(api + "/v1/predict", body)
assert pred["label"] and pred["model_version"] == model["model_version"], pred
print(f"predicted {pred['label']} ({pred['top'][0]['probability']:.2f})")
done = post(api + "/admin/reload", {}, key)  # re-resolves the alias: still version 1
assert done["changed"] is False and done["source"]["version"] == "1", done
print("POST /admin/reload: the champion re-resolved, unchanged")
page = urllib.request.urlopen(ui + "/ui/", timeout=60)
text = page.read().decode()
assert page.status == 200 and "gradio" in text.lower(), text[:300]
print("UI: /ui/ answers with the Gradio app")
PY

step "Prometheus scraped /metrics"
"$PY" - <<'PY'
import json, os, time, urllib.parse, urllib.request

prom = f"http://127.0.0.1:{os.environ['PROMETHEUS_PORT']}/api/v1"

def query(q):
    url = f"{prom}/query?{urllib.parse.urlencode({'query': q})}"
    return json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]

deadline = time.time() + 60
while True:  # a scrape every 5 s (docker/prometheus.yml)
    up = {r["metric"]["job"]: r["value"][1] for r in query("up")}
    rows = query('sum(modalfuse_predictions_total{job="modalfuse-api"})')
    scored = float(rows[0]["value"][1]) if rows else 0.0
    if up.get("modalfuse-api") == "1" and up.get("modalfuse-ui") == "1" and scored >= 3:
        break
    if time.time() > deadline:
        targets = json.load(urllib.request.urlopen(prom + "/targets", timeout=10))
        raise SystemExit(f"not scraped in time: up={up}, predictions={scored}, targets="
                         f"{[(t['labels'], t['health'], t['lastError']) for t in targets['data']['activeTargets']]}")
    time.sleep(2)
print(f"targets up: {sorted(up)}; modalfuse_predictions_total (api) = {scored:g}")
PY

step "done"
echo "compose-test passed in ${SECONDS}s"
