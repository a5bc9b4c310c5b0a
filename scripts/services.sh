#!/usr/bin/env bash
# Starts the local services the tests use, if they are not running:
#   RabbitMQ on 127.0.0.1:5672, and Google's Firestore emulator on 127.0.0.1:${FIRESTORE_EMULATOR_PORT:-8086}.
# Prints `export FIRESTORE_EMULATOR_HOST=...` for the caller to eval. An emulator this script
# started has its PID in $RECALL_SERVICES_DIR/firestore-emulator.pid; `scripts/services.sh stop`
# stops it again (and nothing it did not start).
set -euo pipefail
state="${RECALL_SERVICES_DIR:-${TMPDIR:-/tmp}/recall-services}"
mkdir -p "$state"

if [ "${1:-}" = stop ]; then
  if [ -f "$state/firestore-emulator.pid" ]; then
    kill "$(cat "$state/firestore-emulator.pid")" 2>/dev/null || true
    rm -f "$state/firestore-emulator.pid"
  fi
  exit 0
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services: starting RabbitMQ" >&2
  rabbitmq-server -detached
  # The node takes a few seconds to answer at all; then wait for its applications.
  for _ in $(seq 1 120); do
    rabbitmqctl -q ping >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
timeout 120 rabbitmqctl -q await_startup
echo "services: RabbitMQ $(rabbitmqctl -q version) is up" >&2

port="${FIRESTORE_EMULATOR_PORT:-8086}"
if ! curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1; then
  jar="$(dpkg -L google-cloud-cli-firestore-emulator 2>/dev/null | grep 'cloud-firestore-emulator.jar$' || true)"
  if [ -z "$jar" ]; then
    echo "services: the Firestore emulator is missing: apt-get install google-cloud-cli-firestore-emulator openjdk-17-jre-headless" >&2
    exit 1
  fi
  echo "services: starting the Firestore emulator on 127.0.0.1:$port" >&2
  # Started with java directly (the gcloud wrapper forks, so its PID would not be java's).
  nohup java -Xmx1g -Duser.language=en -cp "$jar" \
    com.google.cloud.datastore.emulator.firestore.CloudFirestore \
    start --host=127.0.0.1 --port="$port" >"$state/firestore-emulator.log" 2>&1 &
  echo $! >"$state/firestore-emulator.pid"
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$port/" >/dev/null || {
    echo "services: the Firestore emulator did not start; its log:" >&2
    tail -20 "$state/firestore-emulator.log" >&2
    exit 1
  }
fi
echo "services: Firestore emulator is up on 127.0.0.1:$port" >&2
echo "export FIRESTORE_EMULATOR_HOST=127.0.0.1:$port"
