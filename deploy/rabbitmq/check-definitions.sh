#!/usr/bin/env bash
# Proves deploy/rabbitmq/definitions.json is exactly the topology recall declares (prefix
# `recall`, RECALL_SHARDS=8, RECALL_DELIVERY_LIMIT=5, RECALL_RETRY_DELAYS=5,30,300), on the local
# broker, in temporary vhosts that are deleted at the end:
#
#   1. imports the file (vhost "/" rewritten) into a fresh vhost  recall-defs-test-<pid>;
#   2. lets the real recall-publisher declare its topology in an empty vhost  recall-defs-ref-<pid>,
#      and diffs the two vhosts: queues (durable, auto_delete, arguments, type), exchanges and
#      bindings must be identical;
#   3. starts recall-publisher and recall-worker against the imported vhost: their declarations
#      must pass (RabbitMQ answers PRECONDITION_FAILED, and they exit, when an argument differs);
#      one webhook event must be routed to a shard queue and consumed by the worker;
#   4. negative control: a copy with x-delivery-limit 6 must make the publisher refuse to start,
#      so step 3 really detects a mismatch.
#
#   deploy/rabbitmq/check-definitions.sh
#
# Needs: cargo, curl, rabbitmqctl with the rights to add and delete vhosts (root, or the rabbitmq
# user: it reads the Erlang cookie), a broker at AMQP_HOST:AMQP_PORT (127.0.0.1:5672) and a user
# AMQP_USER/AMQP_PASS (guest/guest) that it grants on the temporary vhosts. Binaries are debug
# builds in CARGO_TARGET_DIR (default /var/tmp/recall-target, like .ci/run). Exits non-zero on
# any difference or failure.
#
# Importing for real (ops): `rabbitmqctl import_definitions deploy/rabbitmq/definitions.json`, or
# `load_definitions = /path/definitions.json` in rabbitmq.conf (imported at boot), or the
# management UI / `POST /api/definitions` when rabbitmq_management is enabled. The file names the
# vhost "/" and holds no users, permissions or secrets. Another prefix, shard count, delivery
# limit or retry delays need another file: the publisher and workers refuse to start against
# queues declared with other arguments (this script shows the diff).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
defs="${RECALL_DEFINITIONS:-$here/definitions.json}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/recall-target}"
AMQP_HOST="${AMQP_HOST:-127.0.0.1}"
AMQP_PORT="${AMQP_PORT:-5672}"
AMQP_USER="${AMQP_USER:-guest}"
AMQP_PASS="${AMQP_PASS:-guest}"
RABBITMQCTL="${RABBITMQCTL:-rabbitmqctl}"

vh_defs="recall-defs-test-$$"
vh_ref="recall-defs-ref-$$"
vh_bad="recall-defs-bad-$$"
work="$(mktemp -d)"
pids=()

say() { echo "check-definitions: $*"; }
fail() {
    echo "check-definitions: FAIL: $*" >&2
    exit 1
}
ctl() { "$RABBITMQCTL" -q "$@"; }

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for vh in "$vh_defs" "$vh_ref" "$vh_bad"; do
        ctl delete_vhost "$vh" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

for tool in cargo curl "$RABBITMQCTL"; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
ctl status >/dev/null 2>&1 || fail "$RABBITMQCTL cannot reach the broker (run as root or as the rabbitmq user)"

say "building recall-publisher and recall-worker"
(cd "$repo" && cargo build -p recall-publisher && cargo build -p recall-worker)
publisher_bin="$CARGO_TARGET_DIR/debug/recall-publisher"
worker_bin="$CARGO_TARGET_DIR/debug/recall-worker"

# A loopback port nothing answers on.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

secret="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

# start <name> <binary> <vhost> <listen env var>: runs a recall binary with recall's defaults only
# (clean environment), embedded stores in a temp folder, and OpenAI-compatible embeddings that are
# never called (no model to load). Sets $started_pid and $started_url.
start() {
    local name="$1" bin="$2" vhost="$3" listen_var="$4" port
    port="$(free_port)"
    mkdir -p "$work/$name"
    env -i PATH="$PATH" HOME="$work/$name" \
        AMQP_URL="amqp://$AMQP_USER:$AMQP_PASS@$AMQP_HOST:$AMQP_PORT/$vhost" \
        "$listen_var=127.0.0.1:$port" \
        RECALL_DATA_DIR="$work/$name/data" \
        RECALL_WEBHOOK_SECRET="$secret" \
        RECALL_EMBEDDER=openai OPENAI_BASE_URL=http://127.0.0.1:9/v1 \
        RUST_LOG=warn \
        "$bin" >"$work/$name.log" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
    started_url="http://127.0.0.1:$port"
}

# wait_ready <name> <pid> <url>: until /readyz answers 200 (the broker answered, the topology is
# declared); fails if the process exits first.
wait_ready() {
    local name="$1" pid="$2" url="$3"
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up:
$(cat "$work/$name.log")"
        curl -sf "$url/readyz" >/dev/null && return 0
        sleep 0.2
    done
    fail "$name not ready within 60 s:
$(cat "$work/$name.log")"
}

# stop <pid> <name>: SIGTERM, and the exit status must be 0.
stop() {
    local pid="$1" name="$2" rc=0
    kill -TERM "$pid"
    wait "$pid" || rc=$?
    [ "$rc" -eq 0 ] || fail "$name exited with $rc on SIGTERM:
$(cat "$work/$name.log")"
}

# The queues, exchanges and bindings of a vhost, sorted, one per line.
dump() {
    local vh="$1"
    {
        ctl list_queues -p "$vh" --no-table-headers name durable auto_delete arguments type | sed 's/^/queue    /'
        ctl list_exchanges -p "$vh" --no-table-headers name type durable auto_delete internal arguments | sed 's/^/exchange /'
        ctl list_bindings -p "$vh" --no-table-headers source_name source_kind destination_name destination_kind routing_key arguments | sed 's/^/binding  /'
    } | LC_ALL=C sort
}

# import <vhost> <file>: a fresh vhost with the file imported into it (vhost "/" rewritten).
import_into() {
    local vh="$1" file="$2" copy="$work/$1.json"
    ctl add_vhost "$vh" >/dev/null
    ctl set_permissions -p "$vh" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
    sed -e "s#\"vhost\": \"/\"#\"vhost\": \"$vh\"#" -e "s#\"name\": \"/\"#\"name\": \"$vh\"#" "$file" >"$copy"
    ! grep -q '"/"' "$copy" || fail "$file names vhost \"/\" in a form this script does not rewrite"
    # Through stdin: given a path, the broker node (another user) would open the file itself.
    "$RABBITMQCTL" -q import_definitions --format json <"$copy" >/dev/null
    # The import is asynchronous: wait until every queue of the file exists.
    local want got
    want="$(grep -c '"x-queue-type"' "$copy")"
    for _ in $(seq 1 150); do
        got="$(ctl list_queues -p "$vh" --no-table-headers name | grep -c . || true)"
        [ "$got" -ge "$want" ] && return 0
        sleep 0.2
    done
    fail "import into $vh: $got of $want queues after 30 s"
}

started=$SECONDS
say "importing $(basename "$defs") into vhost $vh_defs"
import_into "$vh_defs" "$defs"

say "declaring the topology with recall-publisher in the empty vhost $vh_ref"
ctl add_vhost "$vh_ref" >/dev/null
ctl set_permissions -p "$vh_ref" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
start ref-publisher "$publisher_bin" "$vh_ref" RECALL_LISTEN
ref_pid=$started_pid
wait_ready ref-publisher "$ref_pid" "$started_url"
stop "$ref_pid" ref-publisher

say "comparing the imported vhost with the declared one"
dump "$vh_defs" >"$work/imported.txt"
dump "$vh_ref" >"$work/declared.txt"
if ! diff -u "$work/declared.txt" "$work/imported.txt" >"$work/diff.txt"; then
    cat "$work/diff.txt" >&2
    fail "definitions.json differs from what recall-publisher declares (- declared, + imported)"
fi
queues="$(grep -c '^queue' "$work/imported.txt")"
exchanges="$(grep -c '^exchange recall\.' "$work/imported.txt")"
bindings="$(grep -c '^binding  recall\.' "$work/imported.txt")"
if [ "$queues" -ne 13 ] || [ "$exchanges" -ne 2 ] || [ "$bindings" -ne 9 ]; then
    fail "expected 13 queues, 2 exchanges, 9 bindings; found $queues, $exchanges, $bindings"
fi
say "identical: $queues quorum queues, $exchanges exchanges, $bindings bindings (plus the default exchange's)"

say "recall-publisher and recall-worker against the imported vhost"
start publisher "$publisher_bin" "$vh_defs" RECALL_LISTEN
pub_pid=$started_pid
pub_url=$started_url
wait_ready publisher "$pub_pid" "$pub_url"
status="$(curl -s -o "$work/webhook.json" -w '%{http_code}' -X POST "$pub_url/firebase/message-created" \
    -H "Authorization: Bearer $secret" -H 'content-type: application/json' \
    -d '{"user_id":"defs-check","character_name":"meher","message_id":"m1"}')"
[ "$status" = 202 ] || fail "webhook answered $status: $(cat "$work/webhook.json")"
events_ready() {
    ctl list_queues -p "$vh_defs" --no-table-headers name messages |
        awk '$1 ~ /^recall\.events\.[0-9]+$/ { n += $2 } END { print n + 0 }'
}
for _ in $(seq 1 50); do
    [ "$(events_ready)" -eq 1 ] && break
    sleep 0.2
done
[ "$(events_ready)" -eq 1 ] || fail "the event is not in a shard queue ($(events_ready) messages)"
start worker "$worker_bin" "$vh_defs" RECALL_WORKER_LISTEN
wrk_pid=$started_pid
wait_ready worker "$wrk_pid" "$started_url"
for _ in $(seq 1 100); do
    [ "$(events_ready)" -eq 0 ] && break
    sleep 0.2
done
[ "$(events_ready)" -eq 0 ] || fail "the worker did not consume the event"
stop "$wrk_pid" worker
stop "$pub_pid" publisher
! grep -qi 'precondition\|different arguments' "$work/publisher.log" "$work/worker.log" ||
    fail "a declaration was refused:
$(cat "$work/publisher.log" "$work/worker.log")"
say "declarations accepted; one event published (202), routed to a shard queue and consumed"

say "negative control: x-delivery-limit 6 in vhost $vh_bad must be refused"
sed 's/"x-delivery-limit": 5/"x-delivery-limit": 6/' "$defs" >"$work/bad-source.json"
import_into "$vh_bad" "$work/bad-source.json"
start bad-publisher "$publisher_bin" "$vh_bad" RECALL_LISTEN
bad_pid=$started_pid
rc=0
for _ in $(seq 1 150); do
    kill -0 "$bad_pid" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$bad_pid" 2>/dev/null; then
    fail "recall-publisher started against mismatching queues"
fi
wait "$bad_pid" || rc=$?
if [ "$rc" -eq 0 ] || ! grep -q 'PRECONDITION_FAILED' "$work/bad-publisher.log"; then
    fail "expected a PRECONDITION_FAILED exit, got $rc:
$(cat "$work/bad-publisher.log")"
fi
say "refused as expected: $(grep -o "queue \`[^\`]*\` already exists with different arguments" "$work/bad-publisher.log" | head -1)"

say "PASS in $((SECONDS - started)) s (vhosts deleted on exit)"
