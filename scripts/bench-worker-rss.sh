#!/usr/bin/env bash
# Resident memory of the real binaries under event load, on loopback only: starts
# recall-publisher and one recall-worker (release builds, RabbitMQ at 127.0.0.1:5672, queue prefix
# unique to this run), sends EVENTS events (default 20000) through the publisher's webhook, waits
# until the worker counted them all, and prints each process's peak RSS (VmHWM) and RSS now.
# Embeddings are configured as OpenAI-compatible (never called: no batch comes due), so the
# processes do not load the local model; extraction and embedding are not what is measured here.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS="${EVENTS:-20000}"
PREFIX="rss-$(date +%s)"
WORK="$(mktemp -d)"
cargo build --release -q -p recall-worker -p recall-publisher
BIN="${CARGO_TARGET_DIR:-target}/release"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" RECALL_AMQP_PREFIX="$PREFIX"
export RECALL_EMBEDDER=openai OPENAI_BASE_URL="http://127.0.0.1:9/v1" RUST_LOG=warn
export BATCH_THRESHOLD=1000000 BATCH_MAX_MESSAGES=1000000 BATCH_IDLE_MIN_MESSAGES=1000000
export RECALL_SWEEP_SECONDS=3600
RECALL_DATA_DIR="$WORK/w" RECALL_WORKER_LISTEN=127.0.0.1:19090 "$BIN/recall-worker" &
WPID=$!
RECALL_DATA_DIR="$WORK/p" RECALL_LISTEN=127.0.0.1:18081 "$BIN/recall-publisher" &
PPID_=$!
cleanup() {
  kill -TERM "$WPID" "$PPID_" 2>/dev/null || true
  wait "$WPID" "$PPID_" 2>/dev/null || true
  for q in $(rabbitmqctl -q list_queues --no-table-headers name | grep "^$PREFIX"); do
    rabbitmqctl -q delete_queue "$q" >/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18081/healthz >/dev/null && curl -sf http://127.0.0.1:19090/healthz >/dev/null && break
  sleep 0.2
done
rss() { awk -v k="$2:" '$1==k {print int($2/1024)}' "/proc/$1/status"; }
echo "idle: worker RSS $(rss $WPID VmRSS) MiB, publisher RSS $(rss $PPID_ VmRSS) MiB"
python3 - "$EVENTS" <<'PY'
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
n = int(sys.argv[1])
def send(i):
    body = json.dumps({"user_id": f"u{i % 200}", "character_name": "meher", "message_id": f"m{i}"}).encode()
    req = urllib.request.Request("http://127.0.0.1:18081/firebase/message-created", data=body,
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        return r.status
t = time.time()
with ThreadPoolExecutor(32) as pool:
    codes = list(pool.map(send, range(n)))
assert codes.count(202) == n, f"{codes.count(202)} of {n} accepted"
def counted():
    text = urllib.request.urlopen("http://127.0.0.1:19090/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if l.startswith('recall_events_total{outcome="counted"}') or l.startswith('recall_events_total{outcome="duplicate"}'))
while counted() < n:
    time.sleep(0.05)
print(f"load: {n} events through publisher -> RabbitMQ -> worker counter in {time.time() - t:.1f} s "
      f"({n / (time.time() - t):.0f} events/s, python load generator with 32 threads)")
PY
echo "under load: worker peak RSS $(rss $WPID VmHWM) MiB (now $(rss $WPID VmRSS)), publisher peak RSS $(rss $PPID_ VmHWM) MiB (now $(rss $PPID_ VmRSS))"
