#!/usr/bin/env bash
# Runs recall on the embedded default (no account, no server): fetches the embedding model if
# missing, builds, starts `recall-worker standalone` on 127.0.0.1:8080, ingests a demo
# conversation through the HTTP API, shows a search, and keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN="${RECALL_LISTEN:-127.0.0.1:8080}"
export RECALL_DATA_DIR="${RECALL_DATA_DIR:-./recall-data}"
# The model is cached (and sha256-checked) in the data folder.
export RECALL_MODEL_DIR="${RECALL_MODEL_DIR:-$RECALL_DATA_DIR/models/all-MiniLM-L6-v2}"
BASE="http://$LISTEN"

scripts/fetch-model.sh "$RECALL_MODEL_DIR"
# The dev profile builds faster and already optimises the embedding model's crates.
cargo build -p recall-worker
"${CARGO_TARGET_DIR:-target}/debug/recall-worker" standalone --listen "$LISTEN" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 120); do
  curl -sf "$BASE/memory/health" >/dev/null && break
  kill -0 $PID 2>/dev/null || { echo "recall-worker exited" >&2; exit 1; }
  sleep 0.5
done

python3 - "$BASE" deploy/examples/demo-conversation.jsonl <<'PY'
import json, sys, time, urllib.request, urllib.parse
base, path = sys.argv[1], sys.argv[2]
def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)
msgs = [json.loads(l) for l in open(path, encoding="utf-8")]
pair = f"{msgs[0]['user_id']}/{msgs[0]['character_name']}"
for m in msgs:
    call("POST", f"/memory/messages/{pair}", {k: m[k] for k in ("message_id", "role", "text", "created_at", "channel")})
print(f"ingested {len(msgs)} messages for {pair}")
for _ in range(120):
    s = call("GET", f"/memory/stats/{pair}")
    if s["messages"]["unsynced"] < 5 and s["batches"]["done"] > 0:
        break
    time.sleep(0.5)
print("stats:", json.dumps(s["messages"]), "memories:", s["memories"]["current"], "extractor:", s["extractor"])
q = "what is the name of the user's dog?"
r = call("GET", f"/memory/search/{pair}?" + urllib.parse.urlencode({"query": q, "limit": 3}))
print(f"search {q!r}:")
for hit in r["results"]:
    print(f"  {hit['score']:.3f} [{hit['category']}] {hit['text']}")
PY
echo
echo "recall is running on $BASE (data in $RECALL_DATA_DIR). Try:"
echo "  curl '$BASE/memory/search/demo_user/meher?query=coffee&limit=3'"
echo "  curl '$BASE/memory/context/demo_user/meher?message=weekend%20plans&max_tokens=300'"
echo "Ctrl-C stops it."
wait $PID
