#!/usr/bin/env bash
# Tests the Python client against a real server: builds recall-worker, starts
# `recall-worker standalone` on a free loopback port with a temporary data folder and an API key,
# installs the package and pytest in a fresh venv, runs tests/, stops the server. Exits non-zero
# on any failure.
#
#   deploy/clients/python/test.sh            (CARGO_TARGET_DIR and RECALL_MODEL_DIR are honoured)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export RECALL_MODEL_DIR="${RECALL_MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
PYTHON="${PYTHON:-python3}"

WORK="$(mktemp -d)"
BIN_DIR=""
PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK" ${BIN_DIR:+"$BIN_DIR"}
}
trap cleanup EXIT INT TERM

(cd "$ROOT" && scripts/fetch-model.sh "$RECALL_MODEL_DIR")
(cd "$ROOT" && cargo build -p recall-worker)
# The target folder may be shared with other builds: keep this build's binary under its own name
# (a hard link: a later build replaces debug/recall-worker, not this inode).
BIN_DIR="$(mktemp -d "$CARGO_TARGET_DIR/recall-client-test.XXXXXX")"
ln "$CARGO_TARGET_DIR/debug/recall-worker" "$BIN_DIR/recall-worker" 2>/dev/null \
    || cp "$CARGO_TARGET_DIR/debug/recall-worker" "$BIN_DIR/recall-worker"

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export RECALL_URL="http://127.0.0.1:$PORT"
export RECALL_API_KEY="py-client-test-$RANDOM$RANDOM"
RECALL_DATA_DIR="$WORK/data" RECALL_SWEEP_SECONDS=1 \
    "$BIN_DIR/recall-worker" standalone --listen "127.0.0.1:$PORT" \
    >"$WORK/server.log" 2>&1 &
PID=$!

ready=""
for _ in $(seq 1 240); do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "recall-worker exited; its log:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1] + '/healthz', timeout=1)" "$RECALL_URL" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ -n "$ready" ]] || { echo "recall-worker did not answer on $RECALL_URL" >&2; cat "$WORK/server.log" >&2; exit 1; }
echo "recall-worker standalone on $RECALL_URL (pid $PID)"

"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "$HERE[test]"
status=0
(cd "$HERE" && "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider "$@") || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- server log (tail) ---" >&2
    tail -n 40 "$WORK/server.log" >&2
fi
exit $status
