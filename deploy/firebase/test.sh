#!/usr/bin/env bash
# Tests the Cloud Function against a real recall-publisher and RabbitMQ, on loopback only.
#
#   deploy/firebase/test.sh
#
# Needs: cargo, node 20 + npm, and a RabbitMQ broker at AMQP_URL (default
# amqp://guest:guest@127.0.0.1:5672/%2f). Builds recall-publisher (debug, default features, in
# CARGO_TARGET_DIR, default /var/tmp/recall-target like .ci/run), installs the pinned npm packages
# from package-lock.json, compiles the TypeScript and runs node's test runner. The tests start the
# publisher themselves under a queue prefix unique to the run and delete that prefix's queues and
# exchanges at the end. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/recall-target}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "firebase test: node >= 20 is required (found $(node --version))" >&2
    exit 1
fi

echo "firebase test: building recall-publisher"
(cd "$repo" && cargo build -p recall-publisher)
export RECALL_PUBLISHER_BIN="$CARGO_TARGET_DIR/debug/recall-publisher"

cd "$here"
echo "firebase test: npm ci"
# Install scripts are not needed by anything here (TypeScript, the SDK, amqplib).
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
rm -rf lib
npm run --silent build
echo "firebase test: running the tests"
npm test --silent
