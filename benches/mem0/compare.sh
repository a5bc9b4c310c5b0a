#!/usr/bin/env bash
# LLM calls, embedding calls and prompt tokens per 100 messages: recall vs mem0, both ingesting
# the same conversations against one local OpenAI-compatible fake that counts what it receives
# (benches/mem0/README.md). Loopback only; every process it starts is stopped on exit.
#
#   benches/mem0/compare.sh [DATA_DIR]
#
# DATA_DIR defaults to $RECALL_TEST_DATA, else ../shared/data beside the repository (as
# tests/support). Settings: RECALL_BENCH_VENV (mem0's venv, default /var/tmp/recall-mem0-venv),
# RECALL_WORKER_BIN (else ${CARGO_TARGET_DIR:-target}/{release,debug}/recall-worker),
# BENCH_MEM0_TIMEOUT / BENCH_RECALL_TIMEOUT (seconds per side, default 1200 / 600),
# BENCH_KEEP=1 keeps the scratch folder.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="$(cd "${1:-${RECALL_TEST_DATA:-$REPO/../shared/data}}" && pwd)"
VENV="${RECALL_BENCH_VENV:-/var/tmp/recall-mem0-venv}"
MEM0_TIMEOUT="${BENCH_MEM0_TIMEOUT:-1200}"
RECALL_TIMEOUT="${BENCH_RECALL_TIMEOUT:-600}"
DIMS=1536 # text-embedding-3-small's size: recall's default for that model, set for mem0
RECALL_KEY=bench-key

die() { echo "compare.sh: $*" >&2; exit 1; }
ls "$DATA"/*__*.jsonl >/dev/null 2>&1 || die "no <user>__<character>.jsonl in $DATA"

# --- the recall-worker binary ----------------------------------------------------------------
BIN="${RECALL_WORKER_BIN:-}"
if [[ -z "$BIN" ]]; then
  TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  for b in "$TARGET/release/recall-worker" "$TARGET/debug/recall-worker"; do
    [[ -x "$b" ]] && { BIN="$b"; break; }
  done
fi
[[ -n "$BIN" && -x "$BIN" ]] || die "no recall-worker binary: cargo build -p recall-worker, or set RECALL_WORKER_BIN"

# --- mem0's venv, pinned -----------------------------------------------------------------------
REQ="$HERE/requirements.txt"
STAMP="$VENV/.recall-requirements.sha256"
if [[ ! -x "$VENV/bin/python" ]] || ! sha256sum --status -c "$STAMP" 2>/dev/null; then
  echo "installing mem0 into $VENV (pinned by $REQ)" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  timeout 900 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2 \
    || die "pip install -r $REQ failed or took over 15 min"
  sha256sum "$REQ" > "$STAMP"
fi

# --- scratch folder and cleanup ----------------------------------------------------------------
T="$(mktemp -d -t recall-mem0-bench.XXXXXX)"
FAKE_PID="" WORKER_PID=""
cleanup() {
  local code=$?
  if [[ -n "$WORKER_PID" ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$WORKER_PID" 2>/dev/null || true
  fi
  [[ -n "$FAKE_PID" ]] && kill "$FAKE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ "${BENCH_KEEP:-0}" == 1 || $code -ne 0 ]]; then
    echo "scratch folder kept: $T" >&2
  else
    rm -rf "$T"
  fi
  exit $code
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${secs}s"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the fake ----------------------------------------------------------------------------------
python3 "$HERE/fake_openai.py" --port-file "$T/fake.port" 2>"$T/fake.log" &
FAKE_PID=$!
wait_for "the fake OpenAI server" 10 test -s "$T/fake.port"
FAKE="http://127.0.0.1:$(cat "$T/fake.port")"
BASE_ENV=(PATH="$PATH" HOME="$T/home" LANG=C.UTF-8 NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost)
mkdir -p "$T/home"

# --- mem0 --------------------------------------------------------------------------------------
MEM0_VERSION="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("mem0ai"))')"
echo "mem0 $MEM0_VERSION: ingesting $DATA (one add() per exchange)" >&2
env -i "${BASE_ENV[@]}" MEM0_TELEMETRY=False MEM0_DIR="$T/mem0-home" \
  timeout "$MEM0_TIMEOUT" "$VENV/bin/python" "$HERE/run_mem0.py" --data "$DATA" \
  --base-url "$FAKE/v1" --api-key sk-mem0 --workdir "$T/mem0" --dims "$DIMS" \
  >"$T/mem0.json" 2>"$T/mem0.log" \
  || { tail -20 "$T/mem0.log" >&2; die "mem0 ingestion failed or exceeded ${MEM0_TIMEOUT}s"; }
grep '^  mem0' "$T/mem0.log" >&2 || true

# --- recall ------------------------------------------------------------------------------------
PORT="$(free_port)"
echo "recall: $BIN standalone on 127.0.0.1:$PORT, OpenAI extractor and embedder -> fake" >&2
env -i "${BASE_ENV[@]}" \
  RECALL_LISTEN="127.0.0.1:$PORT" RECALL_API_KEY="$RECALL_KEY" RECALL_DATA_DIR="$T/recall" \
  RECALL_MESSAGE_STORE=sqlite RECALL_MEMORY_STORE=embedded \
  OPENAI_BASE_URL="$FAKE/v1" OPENAI_API_KEY=sk-recall \
  RECALL_EMBEDDER=openai QDRANT_VECTOR_SIZE="$DIMS" \
  RECALL_SWEEP_SECONDS=3600 \
  "$BIN" standalone >"$T/worker.log" 2>&1 &
WORKER_PID=$!
wait_for "recall-worker (log: $T/worker.log)" 60 curl -sf "http://127.0.0.1:$PORT/memory/health"
timeout $((RECALL_TIMEOUT + 30)) python3 "$HERE/run_recall.py" --data "$DATA" \
  --base "http://127.0.0.1:$PORT" --key "$RECALL_KEY" --fake "$FAKE" --fake-key sk-recall \
  --timeout "$RECALL_TIMEOUT" >"$T/recall.json" 2>"$T/recall.log" \
  || { tail -20 "$T/recall.log" "$T/worker.log" >&2; die "recall replay failed or exceeded ${RECALL_TIMEOUT}s"; }
grep '^  recall' "$T/recall.log" >&2 || true

curl -sf "$FAKE/stats" >"$T/fake-stats.json" || die "could not read the fake's counters"

# --- the table ---------------------------------------------------------------------------------
python3 - "$T" "$MEM0_VERSION" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, sys, datetime
t, mem0_version, commit = sys.argv[1:4]
fake = json.load(open(f"{t}/fake-stats.json"))["keys"]
mem0 = json.loads(open(f"{t}/mem0.json").read().strip().splitlines()[-1])
recall = json.loads(open(f"{t}/recall.json").read().strip().splitlines()[-1])
for key in ("sk-mem0", "sk-recall"):
    if key not in fake:
        sys.exit(f"compare.sh: the fake saw no call with key {key}")
    if fake[key]["unrecognised_chat_calls"]:
        sys.exit(f"compare.sh: {key} sent {fake[key]['unrecognised_chat_calls']} prompts the fake did not recognise")
others = sorted(set(fake) - {"sk-mem0", "sk-recall"})
if others:
    sys.exit(f"compare.sh: calls with unexpected keys {others}")
r, m = fake["sk-recall"], fake["sk-mem0"]
rn, mn = recall["synced"], mem0["messages"]
rows = [
    ("LLM (chat) calls", "chat_calls"),
    ("embedding calls", "embedding_calls"),
    ("embedding inputs (texts)", "embedding_inputs"),
    ("prompt tokens (chat)", "prompt_tokens"),
    ("completion tokens (chat)", "completion_tokens"),
    ("embedding input tokens", "embedding_tokens"),
]
def per100(v, n): return 100.0 * v / n if n else float("nan")
def fmt(x): return f"{x:,.1f}".replace(",", " ") if x < 1000 else f"{x:,.0f}".replace(",", " ")
def num(x): return f"{x:,}".replace(",", " ")
print(f"Per 100 messages ({datetime.date.today().isoformat()}; recall {commit}, mem0 {mem0_version}):\n")
print("| per 100 messages | recall | mem0 | mem0 / recall |")
print("|---|---|---|---|")
for label, k in rows:
    a, b = per100(r[k], rn), per100(m[k], mn)
    ratio = f"{b / a:.1f}x" if a else "-"
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
print("\nTotals:\n")
print("| | recall | mem0 |")
print("|---|---|---|")
print(f"| messages ingested | {num(recall['messages'])} | {num(mem0['messages'])} |")
print(f"| messages processed (the per-100 denominator) | {num(rn)} (unsynced tails < 5: {recall['unsynced']}) | {num(mn)} |")
print(f"| units of work | {recall['batches']} batches ({recall['idle_flushes']} idle tails) | {mem0['exchanges']} add() calls |")
for label, k in rows:
    print(f"| {label} | {num(r[k])} | {num(m[k])} |")
print(f"| memories stored | {num(recall['memories'])} | {num(mem0['memories'])} |")
print(f"| retries / failed batches | {recall['retries']} / {recall['batches_failed']} | - |")
print(f"| wall time of ingestion (s) | {recall['seconds']} | {mem0['seconds']} |")
print(f"\nmem0 add() calls that stored memories: {mem0['adds_with_memories']} (each would add one "
      "embedding call for entity linking with mem0ai[nlp] and its spaCy model, not installed here).")
PY
